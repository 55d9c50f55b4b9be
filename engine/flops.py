"""FLOPs of a LoRA training step, from the model's shape: what the bench sets its timings against and
the cost estimate scales a calibration by (engine/estimate.py). No PyTorch: shapes only."""

from collections.abc import Sequence

from engine.config import LORA_TARGETS, GPTConfig


def step_flops(cfg: GPTConfig, batch: int, seq: int, rank: int, n_classes: int = 2, targets: Sequence[str] = LORA_TARGETS) -> dict[str, float]:
    """FLOPs of one LoRA training step (forward + backward) over batch × seq tokens, all positions.

    With N = batch·seq tokens, d = n_embd, L = n_layer, r = rank:
      frozen products  4 · P · N,  P = L·12d² + d·n_classes (q, k, v, c_proj: 4d²; MLP: 8d²; head).
                       Forward 2PN; backward 2PN for the input gradients only: frozen weights need
                       no weight gradient (the usual 6PN counts a weight gradient we never compute).
      attention        3 · 4·L·seq·d · N: QKᵀ and A·V cost 2·seq·d each per token (full square, as
                       both implementations are charged alike), backward twice the forward.
      LoRA             3 · 2r·Σ(in + out) · N over every adapted Linear: forward x·A·B, backward
                       input gradient and the A and B weight gradients (only the `targets` adapted).
    Layer norms, GELU, softmax, the loss and AdamW are O(N·d) and ignored. For gpt2-small at 8 × 120:
    326.1 + 12.7 + 15.4 = 354.2 GFLOP. Both implementations are credited with this
    same nominal work, so computing fewer positions (the engine's last block) shows up as speed.
    """
    d, L, N = cfg.n_embd, cfg.n_layer, batch * seq
    frozen_params = L * 12 * d * d + d * n_classes
    block_widths = {"attn.q_proj": 2 * d, "attn.k_proj": 2 * d, "attn.v_proj": 2 * d, "attn.c_proj": 2 * d, "mlp.c_fc": 5 * d, "mlp.c_proj": 5 * d}
    lora_widths = L * sum(block_widths.get(target, 0) for target in targets) + ((d + n_classes) if "score" in targets else 0)
    parts = {
        "frozen_matmul": 4.0 * frozen_params * N,
        "attention": 3.0 * 4 * L * seq * d * N,
        "lora": 3.0 * 2 * rank * lora_widths * N,
    }
    parts["total"] = sum(parts.values())
    return parts


def method_step_flops(cfg: GPTConfig, batch: int, seq: int, rank: int, method: str = "lora", targets: Sequence[str] = LORA_TARGETS) -> float:
    """FLOPs of one training step by `method` (engine/methods.py), counted as `step_flops` counts LoRA's:
    full fine-tuning adds every block's weight gradients (6PN for the products) and trains no LoRA; the
    last block forwards every block but runs the backward pass through the last one only (nothing
    before it trains, so autograd stops there). AdamW's update is O(parameters) and left out: for full
    fine-tuning of a large model on a CPU it is not negligible, so that estimate errs low."""
    if method == "lora":
        return step_flops(cfg, batch, seq, rank, targets=targets)["total"]
    d, L, N = cfg.n_embd, cfg.n_layer, batch * seq
    block, head = 12 * d * d, 2 * d
    attention_forward = 4 * seq * d * N  # per block
    if method == "full":
        return 6.0 * (L * block + head) * N + 3.0 * L * attention_forward
    return 2.0 * (L * block + head) * N + L * attention_forward + 4.0 * (block + head) * N + 2.0 * attention_forward
