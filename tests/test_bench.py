"""Smoke test of the benchmark on a tiny model: every section is filled, timings are positive.

Speed targets live in the benchmark's output, never here.
"""

import json

import pytest
from conftest import SMS_ZIP, TINY
from torch import nn

from engine.bench import Report, classify_flops, peers_available, percentile, run_benchmark, step_flops
from engine.config import GPT2_SIZES, GPTConfig
from engine.model import GPT


def test_step_flops_reproduce_the_issue_figure() -> None:
    # issue 4: one book step of gpt2-small (8 x 120 tokens, LoRA r16 everywhere) is about 354 GFLOP
    flops = step_flops(GPT2_SIZES["gpt2-small"], 8, 120, 16)
    assert flops["total"] == pytest.approx(354e9, rel=0.005)
    assert flops["total"] == pytest.approx(flops["frozen_matmul"] + flops["attention"] + flops["lora"])


def test_classify_flops_by_hand() -> None:
    # d = 8, two blocks, two messages of 3 and 5 tokens (N = 8 tokens, M = 2 read positions)
    cfg = GPTConfig("hand", vocab_size=100, context_length=16, n_embd=8, n_layer=2, n_head=2)
    flops = classify_flops(cfg, [3, 5])
    first_block = 2 * 12 * 64 * 8  # every Linear at every token
    last_block = 2 * 2 * 64 * 8 + 2 * 10 * 64 * 2  # k, v at every token; q, c_proj, MLP at the read positions
    head = 2 * 8 * 2 * 2
    assert flops["linear"] == first_block + last_block + head == 16_960
    # causal: position i meets i keys (2·i·d for QKᵀ, the same for A·V); the last block has one query a message
    assert flops["attention"] == 2 * 8 * (3 * 4 + 5 * 6) + 4 * 8 * (3 + 5) == 928
    assert flops["total"] == 17_888


def test_classify_flops_count_every_block_linear() -> None:
    # the count's 12·d² per block must be the model's non-embedding Linear weights, or the floor is wrong
    cfg = GPTConfig("hand", vocab_size=100, context_length=16, n_embd=8, n_layer=2, n_head=2)
    weights = sum(m.weight.numel() for m in GPT(cfg).transformer.h.modules() if isinstance(m, nn.Linear))
    one_position_each = classify_flops(cfg, [1, 1, 1])  # one token a message: the last block runs at it too
    assert one_position_each["linear"] == 2 * (weights + 8 * 2) * 3


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
    assert ours["trainable_parameters"] > 0
    modes = {e["mode"]: e for e in data["epochs"]}
    assert set(modes) == {"book", "recommended"}
    assert modes["book"]["steps_per_epoch"] == modes["recommended"]["steps_per_epoch"] == 130  # 1,045 messages, batch 8
    assert modes["book"]["mean_padded_length"] == 120
    assert modes["recommended"]["mean_padded_length"] < 60  # length grouping: far below the book's 120
    assert all(e["epoch_s"] > 0 and e["measured_steps"] >= 1 for e in modes.values())
    assert modes["book"]["estimates_per_epoch"] == 3  # after steps 1, 51 and 101 of 130
    assert all(0 < e["estimate_s"] < e["live_estimate_s"] for e in modes.values())  # live scoring reads the whole validation set
    overhead = data["ratios"]["evaluation_overhead"]["recommended"]
    assert 0 < overhead["loss_estimates"] < overhead["with_live_scoring"]
    names = {r["implementation"] for r in data["latency"]}
    assert "ours fp32" in names
    (int8,) = [r for r in data["latency"] if r["implementation"] == "ours int8"]  # the benchmark runs on CPU here
    assert 0 <= int8["agreement_with_fp32"] <= 1
    assert [p["dtype"] for p in data["peaks"]] == ["float32", "int8 (dynamic)"] and data["peaks"][1]["gflops"] > 0
    floor = data["classification_floor"]
    assert floor["messages"] == 100 and floor["tokens"] > 100 and floor["gflop"] > floor["attention_gflop"] > 0
    assert floor["fp32_s"] > 0 and floor["int8_s"] > 0 and floor["target_s"] == 2
    for result in data["latency"]:
        assert 0 < result["single_p50_ms"] <= result["single_p95_ms"]
        assert 0 < result["batch_p50_s"] <= result["batch_p95_s"]
        assert result["batch_messages"] == 100
    assert data["ratios"]["padded_length_book_over_recommended"] > 2
    assert data["ratios"]["epoch_speedup_recommended_vs_book"] > 0
    if with_peer:
        assert data["peer"]["step_s"] > 0 and data["ratios"]["step_speedup_vs_transformers_peft"] > 0
        assert "transformers+peft" in names
    else:
        assert data["peer"] is None and data["ratios"]["step_speedup_vs_transformers_peft"] is None
    lines = report.lines()
    assert lines and all(isinstance(line, str) for line in lines)
    assert any("matmul peak" in line for line in lines)
    assert any(line.startswith("  100 messages: ") and "at the fp32 peak" in line and "(target 2 s)" in line for line in lines)
    return data


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
def test_bench_sweep_times_a_grid_on_one_worker_and_on_two(tiny_model_dir, prepared_data) -> None:
    from engine.bench.sweep import SWEEP_RANKS, run_sweep_benchmark

    result = run_sweep_benchmark(str(tiny_model_dir), "cpu", 2, 1, str(prepared_data))
    assert [t.workers for t in result.timings] == [1, 2] and result.runs == len(SWEEP_RANKS) and result.steps == 1
    for timing in result.timings:
        assert set(timing.states) == {"done"} and timing.wall_s > 0
        assert len(timing.startup_s) == len(SWEEP_RANKS) and all(0 < s < timing.wall_s for s in timing.startup_s)  # launch to first step, per run
    printed = result.lines()
    assert printed[1].lstrip().startswith("1 worker :") and printed[2].lstrip().startswith("2 workers:") and "x faster" in printed[3]
    assert json.loads(json.dumps(result.to_dict()))["speedup"] == round(result.speedup, 3)
