"""Smoke test of the benchmark on a tiny model: every section is filled, timings are positive.

Speed targets live in the benchmark's output, never here.
"""

import json

import pytest
from conftest import SMS_ZIP, TINY

from engine.bench import Report, _int8_option, peers_available, percentile, run_benchmark, step_flops
from engine.config import GPT2_SIZES


def test_step_flops_reproduce_the_issue_figure() -> None:
    # issue 4: one book step of gpt2-small (8 x 120 tokens, LoRA r16 everywhere) is about 354 GFLOP
    flops = step_flops(GPT2_SIZES["gpt2-small"], 8, 120, 16)
    assert flops["total"] == pytest.approx(354e9, rel=0.005)
    assert flops["total"] == pytest.approx(flops["frozen_matmul"] + flops["attention"] + flops["lora"])


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
    names = {r["implementation"] for r in data["latency"]}
    assert "ours fp32" in names
    if _int8_option() is not None:
        (int8,) = [r for r in data["latency"] if r["implementation"] == "ours int8"]
        assert 0 <= int8["agreement_with_fp32"] <= 1
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
