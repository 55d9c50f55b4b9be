"""Killing a process while it saves must leave the previous files or the new ones, never a broken one."""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.adapter import read_adapter
from engine.atomic import atomic_path, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

# Saves an adapter and a run record over and over, each round with different contents, as a
# training run does at its end; the parent kills it at a random moment.
SAVER = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from engine.config import GPTConfig
    from engine.adapter import AdapterConfig, save_adapter
    from engine.classifier import build_classifier
    from engine.config import LoRAConfig
    from engine.model import GPT
    from engine.atomic import write_text_atomic

    out = sys.argv[1]
    # Big enough (about 5 MB of adapter) that most of each round is spent writing.
    shape = GPTConfig("saver", context_length=64, n_embd=256, n_layer=4, n_head=4)
    lora = LoRAConfig(rank=64, alpha=8)
    model = build_classifier(GPT(shape), lora)
    for round_ in range(1, 10**6):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.fill_(round_)
        config = AdapterConfig(f"round-{{round_}}", shape, lora, "last_token", "batch", 64)
        record = json.dumps({{"round": round_, "padding": "x" * 4_000_000}})
        print("saving", round_, flush=True)
        save_adapter(model, out + "/adapter", config)
        write_text_atomic(out + "/run.json", record)
    """
)


@pytest.mark.slow
def test_killed_mid_save_leaves_a_complete_adapter_and_record(tmp_path):
    script = SAVER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    rng = random.Random(1234)
    rounds_seen = []
    for attempt in range(12):
        process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        target_round = rng.randint(2, 4)  # round 1 leaves complete files to fall back on
        while process.stdout.readline().split() != ["saving", str(target_round)]:
            assert process.poll() is None, "the saver died on its own"
        time.sleep(rng.uniform(0.0, 0.01))  # somewhere inside that round's save
        process.send_signal(signal.SIGKILL)
        process.wait()
        config, tensors = read_adapter(tmp_path / "adapter")
        adapter_round = int(config.base_model.removeprefix("round-"))
        values = {t.unique().item() for k, t in tensors.items() if "lora_B" in k}
        assert values == {float(adapter_round)}, f"attempt {attempt}: tensors from another save than the config"
        record = json.loads((tmp_path / "run.json").read_text())
        assert record["round"] >= 1
        rounds_seen.append(adapter_round)
    assert max(rounds_seen) > 1


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "run.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half-written")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
