"""GPT-2 in plain PyTorch, with a tied LM head for generation and a class head (`score`) for classifying.

Query, key and value are separate Linear layers (the book's layout), so LoRA can adapt each one
and the parameter counts match the book. Classification computes the last block only at the
position whose logits are read: the other positions' outputs there would be thrown away.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.adapted_linear import adapted_linear, frozen_linear, gelu, gelu_of_frozen, linear_of, updates_of
from engine.config import GPTConfig, Pooling

# Below this many tokens one wide product gains nothing over separate ones (docs/benchmark-cpu.txt has the measurement).
FUSE_MIN_ROWS = 64


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.store_qkv_adjacent()

    @torch.no_grad()
    def store_qkv_adjacent(self) -> None:
        """Lay the frozen q, k and v weights (and biases) end to end in one tensor each.

        `project` then reads them as one fused weight without concatenating a copy on every
        forward pass (a copy that training would also keep alive until backward). Each stays its
        own Parameter, so names, counts and LoRA pairs are the book's.
        """
        bases = [linear_of(layer) for layer in (self.q_proj, self.k_proj, self.v_proj)]
        if any(b is None for b in bases):
            return
        for name in ("weight", "bias"):
            parts = [getattr(b, name) for b in bases]
            fused = torch.cat([p.data for p in parts])
            for parameter, view in zip(parts, fused.split([p.size(0) for p in parts]), strict=True):
                parameter.data = view

    def _apply(self, fn, recurse=True):
        # Moving or casting the module copies each parameter on its own: lay them end to end again.
        super()._apply(fn, recurse)
        self.store_qkv_adjacent()
        return self

    def forward(self, x: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
        """Attend causally over x (B, T, C); with `read` (B,), only at those positions: (B, 1, C)."""
        B, T, C = x.shape
        heads = lambda t: t.view(B, -1, self.n_head, C // self.n_head).transpose(1, 2)
        if read is None:
            q, k, v = (heads(t) for t in project(x, (self.q_proj, self.k_proj, self.v_proj)))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = (heads(t) for t in project(x, (self.k_proj, self.v_proj)))
            (q,) = project(x[torch.arange(B, device=x.device), read].unsqueeze(1), (self.q_proj,))
            q = heads(q)  # (B, nh, 1, hs)
            visible = torch.arange(T, device=x.device)[None, :] <= read[:, None]  # (B, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :])
        return project(y.transpose(1, 2).reshape(B, -1, C), (self.c_proj,))[0]


def project(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """Apply one or several Linear (or LoRA-wrapped Linear) layers to the same input.

    Frozen layers run through `adapted_linear`; several of them read their weights as one
    (sum of outputs, in) weight, each wrapping layer's updates (LoRA's) added to its own layer's
    columns, so the frozen work is one large product instead of several. Few rows gain nothing
    from fusing, so they take the layers one by one; trainable or int8 layers run as themselves.
    """
    bases = [frozen_linear(layer) for layer in layers]
    if any(b is None for b in bases):
        return [layer(x) for layer in layers]
    if len(layers) > 1 and x.numel() // x.size(-1) < FUSE_MIN_ROWS:
        return [project(x, (layer,))[0] for layer in layers]
    widths = [b.out_features for b in bases]
    starts = [sum(widths[:i]) for i in range(len(widths))]
    updates = [update for layer, start in zip(layers, starts, strict=True) for update in updates_of(layer, start)]
    biases = [b.bias for b in bases]
    bias = fused(biases) if all(b is not None for b in biases) else None
    out = adapted_linear(x, fused([b.weight for b in bases]), bias, updates)
    return list(out.split(widths, dim=-1))


def fused(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked along dim 0: a view when they already lie end to end in one storage
    (see `store_qkv_adjacent`), else a concatenated copy. Tensors that train always take the copy,
    since a view of the first would route every gradient to it."""
    first = tensors[0]
    if len(tensors) == 1:
        return first
    offset = first.storage_offset()
    adjacent = all(
        not t.requires_grad
        and t.is_contiguous()
        and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and t.storage_offset() == offset + sum(u.numel() for u in tensors[:i])
        and t.shape[1:] == first.shape[1:]
        for i, t in enumerate(tensors)
    )
    if not adjacent:
        return torch.cat(tensors)
    shape = (sum(t.size(0) for t in tensors), *first.shape[1:])
    return first.detach().as_strided(shape, first.stride())


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc = frozen_linear(self.c_fc)
        if fc is not None and not updates_of(self.c_fc) and not (torch.is_grad_enabled() and x.requires_grad):
            # Nothing to differentiate and nothing added before the GELU: it runs inside the product.
            return project(gelu_of_frozen(x, fc.weight, fc.bias), (self.c_proj,))[0]
        (hidden,) = project(x, (self.c_fc,))
        base = frozen_linear(self.c_proj)
        if base is None:
            return self.c_proj(gelu(hidden))
        # Reading the GELU inside the product keeps only `hidden` for backward, not its GELU too.
        return adapted_linear(hidden, base.weight, base.bias, updates_of(self.c_proj), gelu_first=True)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
        residual = x if read is None else x[torch.arange(x.size(0), device=x.device), read].unsqueeze(1)
        x = residual + self.attn(self.ln_1(x), read)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2. `forward` returns class logits; `lm_logits` returns next-token logits (tied to wte)."""

    def __init__(self, cfg: GPTConfig, n_classes: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.context_length, cfg.n_embd),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps),
            )
        )
        self.score: nn.Linear | None = nn.Linear(cfg.n_embd, n_classes) if n_classes else None
        self.apply(_init_weights)

    @torch.no_grad()
    def store_products_in(self, dtype: torch.dtype) -> None:
        """Keep every block's Linear weights and biases in `dtype` (the frozen base's precision, see
        engine/device.py): their products then compute in it with no cast per pass. The blocks'
        Linear layers never train (LoRA adapts them from outside); embeddings, layer norms and the
        class head keep their own dtype."""
        for block in self.transformer.h:
            for module in block.modules():
                if type(module) is nn.Linear:
                    for parameter in module.parameters(recurse=False):
                        parameter.data = parameter.data.to(dtype)
            block.attn.store_qkv_adjacent()

    def products_dtype(self) -> torch.dtype:
        """The dtype the blocks' products compute in (see `store_products_in`)."""
        base = linear_of(self.transformer.h[0].mlp.c_fc)
        return base.weight.dtype if base is not None else torch.float32  # an int8 layer takes float32 input

    def add_classifier(self, n_classes: int, generator: torch.Generator | None = None) -> None:
        """Give the model a fresh class head with nn.Linear's default initialisation, drawn from
        `generator` (default: a new one at PyTorch's default seed) on the CPU, as the book's head is."""
        weight = self.transformer.wte.weight
        head = nn.Linear(self.cfg.n_embd, n_classes, device="meta")  # built without drawing: nn.Linear draws from the global generator
        head = head.to_empty(device="meta" if weight.device.type == "meta" else "cpu")
        if weight.device.type != "meta":
            init_linear_(head, generator or torch.Generator())
        self.score = head.to(device=weight.device, dtype=weight.dtype)

    def hidden_states(self, idx: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, C), or (B, 1, C) at the `read` positions only."""
        T = idx.size(1)
        if T > self.cfg.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds the model's context of {self.cfg.context_length}")
        positions = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        *early, last = self.transformer.h
        for block in early:
            x = block(x)
        return self.transformer.ln_f(last(x, read))

    def lm_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) through the tied embedding: the generation sanity check."""
        return F.linear(self.hidden_states(idx), self.transformer.wte.weight)

    def forward(self, idx: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, n_classes) from the positions in `read` (B,); default the last position."""
        if self.score is None:
            raise RuntimeError("this model has no class head: call add_classifier first")
        if read is None:
            read = torch.full((idx.size(0),), idx.size(1) - 1, device=idx.device)
        return self.score(self.hidden_states(idx, read)[:, 0])


def read_positions(lengths: torch.Tensor, padded_length: int, pooling: Pooling) -> torch.Tensor:
    """Which position classifies each message: the last real token, or the last position (book)."""
    if pooling == "last_token":
        return (lengths - 1).clamp(min=0)
    return torch.full_like(lengths, padded_length - 1)


@torch.inference_mode()
def generate_greedy(model: GPT, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `ids`; the context is cropped to the model's limit."""
    device = model.transformer.wte.weight.device
    tokens = torch.tensor([ids], device=device)
    for _ in range(max_new_tokens):
        logits = model.lm_logits(tokens[:, -model.cfg.context_length :])[:, -1]
        tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return tokens[0].tolist()


@torch.no_grad()
def init_linear_(layer: nn.Linear, generator: torch.Generator) -> None:
    """nn.Linear's own initialisation (`reset_parameters`: the same draws in the same order), from `generator`."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation; pretrained weights overwrite it, random-weight tests and benchmarks keep it.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
