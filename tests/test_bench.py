"""The benchmark: its FLOP counts against what PyTorch counts, and a run on a tiny model (every section filled, timings positive).

Speed targets live in the benchmark's output, never here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMS_ZIP, TINY
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from engine.adapted_linear import ONEDNN_SWITCH, product_path
from engine.bench import Report, classify_flops, peers_available, percentile, run_benchmark, step_flops
from engine.classifier import build_classifier
from engine.config import GPT2_SIZES, GPTConfig, LoRAConfig
from engine.lora import merge_lora
from engine.model import GPT, read_positions

ROOT = Path(__file__).resolve().parents[1]
HAND = GPTConfig("hand", vocab_size=100, context_length=16, n_embd=8, n_layer=2, n_head=2)


def counted_flops(run) -> dict[str, int]:
    """FLOPs of the matrix products `run` makes, by operator, as PyTorch's own counter tallies them.

    Attention through its math backend (its products are then plain batched matmuls the counter
    sees); the frozen products through F.linear, which the counter knows, not the oneDNN op.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return {str(op).removeprefix("aten."): count for op, count in counter.get_flop_counts()["Global"].items()}


@pytest.fixture
def products_on_f_linear(monkeypatch):
    monkeypatch.setenv(ONEDNN_SWITCH, "0")
    product_path.cache_clear()
    yield
    product_path.cache_clear()


def test_step_flops_of_the_book_step_as_published() -> None:
    # one book step of gpt2-small (8 x 120 tokens, LoRA r16 everywhere), as docs/benchmark-cpu.txt reports it: 354.3 GFLOP
    assert step_flops(GPT2_SIZES["gpt2-small"], 8, 120, 16)["total"] == pytest.approx(354.3e9, rel=5e-4)


def test_step_flops_are_what_the_model_computes() -> None:
    batch, seq, rank = 3, 5, 2
    ids = torch.randint(0, HAND.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    plain = GPT(HAND, n_classes=2)  # every weight trainable: plain products at every position, head included
    forward = counted_flops(lambda: plain.score(plain.hidden_states(ids)))
    both = counted_flops(lambda: plain.score(plain.hidden_states(ids)).sum().backward())
    adapted = build_classifier(GPT(HAND), LoRAConfig(rank=rank, alpha=4))
    lora_weights = sum(p.numel() for name, p in adapted.named_parameters() if "lora_" in name)
    flops = step_flops(HAND, batch, seq, rank)
    assert flops["frozen_matmul"] == 2 * forward["addmm"]  # forward, and the input gradient: frozen weights get no gradient of their own
    assert flops["attention"] == both["bmm"] == 3 * forward["bmm"]  # QKᵀ and A·V over the full square, and their backward
    assert flops["lora"] == 3 * 2 * batch * seq * lora_weights  # 2 FLOPs per LoRA weight per token forward, twice that backward
    assert flops["total"] == flops["frozen_matmul"] + flops["attention"] + flops["lora"]


def test_classify_flops_of_the_linear_layers_are_what_the_engine_computes(products_on_f_linear) -> None:
    lengths = [3, 5, 1]
    model = build_classifier(GPT(HAND), LoRAConfig(rank=2, alpha=4)).eval()
    merge_lora(model)  # as a Classifier runs it
    messages = [torch.randint(0, HAND.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]

    @torch.inference_mode()
    def classify_each() -> None:
        for ids in messages:  # one at a time: no padding, which the count leaves out
            model(ids, read_positions(torch.tensor([ids.size(1)]), ids.size(1), "last_token"))

    assert classify_flops(HAND, lengths)["linear"] == counted_flops(classify_each)["addmm"]


def test_classify_flops_of_causal_attention_by_hand() -> None:
    # Causal: the query at position i (0-based) meets keys 0..i; QKᵀ and A·V cost 2·d FLOPs per
    # query-key pair each. The last block computes one query per message, at its last token.
    d, lengths = HAND.n_embd, [3, 5]
    early_pairs = sum(i + 1 for t in lengths for i in range(t))
    last_pairs = sum(lengths)
    expected = (HAND.n_layer - 1) * early_pairs * 2 * (2 * d) + last_pairs * 2 * (2 * d)
    assert classify_flops(HAND, lengths)["attention"] == expected == 928


def test_classify_flops_count_every_block_linear() -> None:
    # the count's 12·d² per block must be the model's non-embedding Linear weights, or the floor is wrong
    weights = sum(m.weight.numel() for m in GPT(HAND).transformer.h.modules() if isinstance(m, nn.Linear))
    one_position_each = classify_flops(HAND, [1, 1, 1])  # one token a message: the last block runs at it too
    assert one_position_each["linear"] == 2 * (weights + 8 * 2) * 3


@pytest.mark.slow
def test_bench_imports_without_unix_only_modules() -> None:
    blocked = "import sys; sys.modules['resource'] = None; import engine.bench, engine.bench.training"  # as on Windows
    result = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_bench_data_comes_from_the_data_cache_never_from_the_tests(http_server, tmp_path, monkeypatch) -> None:
    from conftest import sms_zip_bytes

    import engine.data.prepared
    from engine.bench.epochs import prepared_for_bench

    http_server.routes["/sms.zip"] = (200, sms_zip_bytes(), {})
    monkeypatch.setattr(engine.data.prepared, "SOURCES", (http_server.url("/sms.zip"),))
    monkeypatch.chdir(tmp_path)
    assert prepared_for_bench(None, tmp_path / "scratch") == Path("data_cache")  # downloaded there, as `data` does
    assert (tmp_path / "data_cache" / "train.csv").is_file() and http_server.hits == ["/sms.zip"]
    assert prepared_for_bench(None, tmp_path / "scratch") == Path("data_cache") and http_server.hits == ["/sms.zip"]  # then reused


def test_percentile_interpolates() -> None:
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def _check(report: Report, with_peer: bool) -> dict:
    data = report.to_dict()
    json.dumps(data)  # what --json prints
    assert {"environment", "flops", "peaks", "ours", "peer", "epochs", "latency", "notes", "ratios", "elapsed_s"} <= data.keys()
    assert data["peaks"][0]["gflops"] > 0 and data["peaks"][0]["shapes"]
    ours = data["ours"]
    assert ours["step_s"] >= ours["step_min_s"] > 0 and ours["examples_per_s"] > 0 and ours["percent_of_peak"] > 0
    assert ours["peak_memory_mb"] >= ours["memory_before_training_mb"] > 0
    with torch.device("meta"):  # the fixed workload's model: LoRA r16 on every Linear, only LoRA trains
        workload = build_classifier(GPT(TINY), LoRAConfig(rank=16, alpha=16))
    assert ours["trainable_parameters"] == sum(p.numel() for name, p in workload.named_parameters() if "lora_" in name)
    modes = {e["mode"]: e for e in data["epochs"]}
    assert set(modes) == {"book", "recommended"}
    assert modes["book"]["steps_per_epoch"] == modes["recommended"]["steps_per_epoch"] == 130  # 1,045 messages, batch 8
    assert modes["book"]["mean_padded_length"] == 120
    assert modes["recommended"]["mean_padded_length"] < 60  # length grouping: far below the book's 120
    assert all(e["epoch_s"] > 0 and e["measured_steps"] >= 1 for e in modes.values())
    assert modes["book"]["estimates_per_epoch"] == 3  # after steps 1, 51 and 101 of 130
    assert all(e["estimate_s"] > 0 and e["live_estimate_s"] > 0 for e in modes.values())
    assert all((e["estimate_validation_batches"], e["live_validation_batches"]) == (5, 19) for e in modes.values())  # live scoring reads all 149
    for mode, epoch in modes.items():  # each overhead is the estimates' time over the epoch's, as printed
        overhead = data["ratios"]["evaluation_overhead"][mode]
        assert overhead["loss_estimates"] == pytest.approx(epoch["estimates_per_epoch"] * epoch["estimate_s"] / epoch["epoch_s"])
        assert overhead["with_live_scoring"] == pytest.approx(epoch["estimates_per_epoch"] * epoch["live_estimate_s"] / epoch["epoch_s"])
    names = {r["implementation"] for r in data["latency"]}
    assert "ours fp32" in names
    (int8,) = [r for r in data["latency"] if r["implementation"] == "ours int8"]  # the benchmark runs on CPU here
    agreement = int8["agreement_with_fp32"]  # the share of the 100 messages whose int8 label is fp32's
    assert agreement * 100 == pytest.approx(round(agreement * 100)) and f"agrees with fp32 on {agreement:.1%}" in "\n".join(report.lines())
    assert [r["agreement_with_fp32"] for r in data["latency"] if r["implementation"] != "ours int8"] == [None] * (len(data["latency"]) - 1)
    assert [p["dtype"] for p in data["peaks"]] == ["float32", "int8 (dynamic)"] and data["peaks"][1]["gflops"] > 0
    floor = data["classification_floor"]
    assert floor["messages"] == 100 and floor["tokens"] > 100 and floor["gflop"] > floor["attention_gflop"] > 0
    assert floor["fp32_s"] > 0 and floor["int8_s"] > 0 and floor["target_s"] == 2
    for result in data["latency"]:
        assert 0 < result["single_p50_ms"] <= result["single_p95_ms"]
        assert 0 < result["batch_p50_s"] <= result["batch_p95_s"]
        assert result["batch_messages"] == 100
    assert data["ratios"]["padded_length_book_over_recommended"] > 2
    assert data["ratios"]["epoch_speedup_recommended_vs_book"] == pytest.approx(modes["book"]["epoch_s"] / modes["recommended"]["epoch_s"])
    if with_peer:
        assert data["peer"]["step_s"] > 0
        assert data["ratios"]["step_speedup_vs_transformers_peft"] == pytest.approx(data["peer"]["step_s"] / ours["step_s"])
        assert "transformers+peft" in names
    else:
        assert data["peer"] is None and data["ratios"]["step_speedup_vs_transformers_peft"] is None
    lines = report.lines()
    assert any("matmul peak" in line for line in lines)
    assert f"precision: fp32; frozen products: {product_path().describe()}" in lines and data["environment"]["frozen_products"] == product_path().describe()
    assert data["environment"]["precision"] == ours["precision"] == "fp32"  # auto on a CPU
    assert ours["tokens_per_s"] == pytest.approx(8 * 120 / ours["step_s"], rel=1e-3)
    rates = data["rates"]["epochs"]
    for mode, epoch in modes.items():
        assert epoch["precision"] == "fp32" and epoch["real_tokens"] > 0
        assert rates[mode]["tokens_per_s"] == pytest.approx(epoch["padded_tokens"] / epoch["epoch_s"], rel=1e-3)
        assert rates[mode]["preset_training_s"] > 5 * epoch["epoch_s"]  # five epochs, and their estimates
    (fp32,) = [r for r in data["latency"] if r["implementation"] == "ours fp32"]
    assert data["ratios"]["classification_batch_over_floor"] == pytest.approx(fp32["batch_p50_s"] / floor["fp32_s"])
    assert [f["precision"] for f in data["footprints"]] == ["fp32", "bf16"]
    assert any(line.startswith("  100 messages: ") and "at the fp32 peak" in line and "(target 2 s)" in line for line in lines)
    checks = {check["what"]: check for check in data["estimate_checks"]}  # the cost estimate against the measurements
    assert set(checks) == {"fixed workload peak memory", "book epoch", "recommended epoch"}
    assert all(check["predicted"] > 0 and check["measured"] > 0 for check in checks.values())
    assert set(data["ratios"]["estimate_errors"]) == set(checks) and any(line.startswith("the cost estimate") for line in lines)
    return data


@pytest.mark.slow
def test_bench_in_process_without_peers() -> None:
    messages: list[str] = []
    report = run_benchmark(TINY, "cpu", 1, str(SMS_ZIP), progress=messages.append, peers=False, isolate=False)
    _check(report, with_peer=False)
    assert messages  # progress lines were reported
    assert not any("not installed" in note for note in report.notes)  # skipped on request, not for lack of them


@pytest.mark.slow
@pytest.mark.skipif(not peers_available(), reason="transformers and peft are dev dependencies")
def test_bench_with_peers_in_subprocesses() -> None:
    report = run_benchmark(TINY, "cpu", 1, str(SMS_ZIP))
    data = _check(report, with_peer=True)
    assert "fresh subprocess" in data["ours"]["memory_method"]


@pytest.mark.slow
def test_bench_sweep_times_a_grid_on_one_worker_and_on_two(tiny_model_dir, small_data) -> None:
    from engine.bench.sweep import SWEEP_RANKS, run_sweep_benchmark

    result = run_sweep_benchmark(str(tiny_model_dir), "cpu", 2, 1, str(small_data))
    assert [t.workers for t in result.timings] == [1, 2] and result.runs == len(SWEEP_RANKS) and result.steps == 1
    for timing in result.timings:
        assert set(timing.states) == {"done"} and timing.wall_s > 0
        assert len(timing.startup_s) == len(SWEEP_RANKS) and all(0 < s < timing.wall_s for s in timing.startup_s)  # launch to first step, per run
    printed = result.lines()
    assert printed[1].lstrip().startswith("1 worker :") and printed[2].lstrip().startswith("2 workers:") and "x faster" in printed[3]
    assert json.loads(json.dumps(result.to_dict()))["speedup"] == round(result.speedup, 3)


def test_the_footprint_counts_the_frozen_blocks_in_bf16_and_lora_in_fp32() -> None:
    from engine.bench.training import footprint

    fp32, bf16 = footprint(TINY, "fp32"), footprint(TINY, "bf16")
    with torch.device("meta"):
        model = build_classifier(GPT(TINY), LoRAConfig(rank=16, alpha=16))
    block_linear = sum(p.numel() for m in model.transformer.h.modules() if type(m) is nn.Linear for p in m.parameters())
    assert fp32.frozen_bytes - bf16.frozen_bytes == 2 * block_linear  # 4 bytes each become 2
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert fp32.trainable_bytes == bf16.trainable_bytes == 4 * lora and fp32.optimizer_bytes == 2 * 4 * lora


@pytest.mark.slow
def test_bench_without_data_runs_the_rest_and_says_so_once(tmp_path, monkeypatch) -> None:
    """Offline with nothing prepared: the fixed workload still runs; the epochs and latency are skipped with one note."""
    import engine.data.prepared

    monkeypatch.chdir(tmp_path)  # an empty data cache
    monkeypatch.setattr(engine.data.prepared, "SOURCES", ("http://127.0.0.1:9/sms.zip",))  # nothing listens there: as offline
    report = run_benchmark(TINY, "cpu", 1, None, peers=False, isolate=False)
    assert report.ours.step_s > 0 and not report.epochs and not report.latency and report.classification_floor is None
    (said,) = [note for note in report.notes if "need the SMS data" in note]
    assert "python -m engine data" in said
    json.dumps(report.to_dict())
    assert report.lines()


@pytest.mark.slow
def test_whole_epochs_are_timed_as_a_run_trains(monkeypatch) -> None:
    from engine.bench.epochs import load_splits_for_bench, time_epochs

    results = time_epochs(TINY, load_splits_for_bench(str(SMS_ZIP)), torch.device("cpu"), 1, True, lambda _: None)
    for epoch in results:
        assert not epoch.extrapolated and epoch.measured_steps == epoch.steps_per_epoch == 130 and epoch.epoch_s > 0
        assert epoch.method.startswith("whole epoch")
