#!/usr/bin/env bash
# LoRA Lab's GPU check, one short window on one GPU (under 8 minutes on an H100):
#   1. the CPU side of the precision path: bf16 on the CPU against fp32, the GELU and the footprints;
#   2. every CUDA test (tests/test_gpu.py: a step and fine_tune end to end at 64 rows or more, both
#      presets, bf16 against fp32, merged classification, fused AdamW and pinned batches);
#   3. `python -m engine bench --device cuda --json --whole-epochs` on gpt2-small and gpt2-xl (random
#      weights, the shipped SMS zip): tokens per second, each preset's epoch, peak memory.
# It writes one report, REPORT_DIR/gpu_check.md, beside each part's log and the benchmarks' JSON.
# Without a CUDA GPU it says so in one line after part 1 and exits 0.
#
#   scripts/gpu_check.sh [REPORT_DIR]     (default: $OUT where the device tool sets it, else ./gpu-check)
#   PYTHON=.venv/bin/python scripts/gpu_check.sh    (default: python3)
#
# Each part has its own time limit, so the whole check ends in time and the report keeps what ran.
# The GPU machine has no gradio: the tests run without the app's fixtures (-p no:app_fixtures).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REPORT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/gpu_check.md"
DATA=tests/fixtures/sms_spam_collection.zip
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
started=$(date +%s)

say() { echo "$*" | tee -a "$REPORT"; }
took() { echo "$(($(date +%s) - started)) s"; }
pytest_part() {  # name, time limit (s), pytest arguments...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$PY" -m pytest -q -rs -p no:app_fixtures -p no:cacheprovider "$@" >"$REPORT_DIR/$name.log" 2>&1
    local code=$?
    say "- $name: $(tail -n 1 "$REPORT_DIR/$name.log") (exit $code$([ $code = 124 ] && echo ', stopped at its time limit'); $(took) so far; log: $name.log)"
}

: >"$REPORT"
say "# LoRA Lab GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say ""
say "- python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n 1)"
say "- devices: $("$PY" -m engine.device 2>&1 | tail -n 1)"
say "- load: $(uptime)"
say ""
say "## 1. the CPU side of the precision path"
pytest_part cpu 100 tests/test_precision.py tests/test_adapted_linear.py tests/test_gpu.py -m "not cuda and not mps"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA GPU here: the CUDA tests and the GPU benchmark were skipped (the CPU part above ran; report: $REPORT)"
    exit 0
fi

say ""
say "## 2. the CUDA tests"
pytest_part cuda 120 tests/test_gpu.py -m cuda

say ""
say "## 3. the benchmark on the GPU (random weights, the shipped SMS data, whole epochs)"
for model in gpt2-small gpt2-xl; do
    limit=$([ "$model" = gpt2-small ] && echo 70 || echo 170)
    timeout "$limit" "$PY" -m engine bench --device cuda --model "$model" --steps 10 --whole-epochs --data "$DATA" --json \
        >"$REPORT_DIR/bench-$model.json" 2>"$REPORT_DIR/bench-$model.log"
    code=$?
    say "- $model: exit $code$([ $code = 124 ] && echo ', stopped at its time limit') after $(took); JSON: bench-$model.json"
done
"$PY" - "$REPORT_DIR" >>"$REPORT" 2>&1 <<'EOF'
import json, sys
from pathlib import Path

folder = Path(sys.argv[1])
device = "unknown"
print("\n| model | precision | step (8 x 120) | tokens/s | vs transformers+peft | peak memory | book epoch | recommended epoch | recommended, 5 epochs | 100 messages |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for path in sorted(folder.glob("bench-*.json")):
    try:
        data = json.loads(path.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"| {path.stem.removeprefix('bench-')} | no result: see {path.stem}.log | | | | | | | | |")
        continue
    ours, ratios, rates, device = data["ours"], data["ratios"], data["rates"], data["environment"]["device_name"]
    epochs = {e["mode"]: e for e in data["epochs"]}
    epoch = lambda mode: f"{epochs[mode]['epoch_s']:.2f} s ({epochs[mode]['precision']}, {rates['epochs'][mode]['tokens_per_s']:,.0f} tokens/s)" if mode in epochs else "-"
    five = f"{rates['epochs']['recommended']['preset_training_s']:.1f} s" if "recommended" in epochs else "-"
    peer = f"{ratios['step_speedup_vs_transformers_peft']:.2f}x" if ratios["step_speedup_vs_transformers_peft"] else "-"
    batch = next((f"{r['batch_p50_s']:.3f} s" for r in data["latency"] if r["implementation"].startswith("ours")), "-")
    print(
        f"| {data['environment']['model']} | {data['environment']['precision']} | {ours['step_s'] * 1e3:.1f} ms | {ours['tokens_per_s']:,.0f} | {peer} "
        f"| {ours['peak_memory_mb'] / 1024:.2f} GB | {epoch('book')} | {epoch('recommended')} | {five} | {batch} |"
    )
print(f"\ndevice: {device}. Targets (docs/gpu.md): gpt2-small recommended at 100k tokens/s or more, its 5 epochs well under 20 s; gpt2-xl's in under a minute")
EOF
say ""
say "done in $(took)"
