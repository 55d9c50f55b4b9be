"""The loss plot: drawn without touching matplotlib's global state."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IN_A_NOTEBOOK = """
import sys
import matplotlib
matplotlib.use("svg")  # a backend of the caller's own, as a notebook sets its inline one
import engine.runs.run
from engine.runs.plot import save_loss_plot
from engine.train import LossEvaluated

points = [LossEvaluated(0, 0.1, 8, 0.9, 0.95), LossEvaluated(50, 0.5, 408, 0.4, 0.5)]
save_loss_plot(points, sys.argv[1])
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


@pytest.mark.slow
def test_importing_the_engine_and_plotting_leave_the_backend_alone(tmp_path):
    plot = tmp_path / "loss.png"
    result = subprocess.run([sys.executable, "-c", IN_A_NOTEBOOK, str(plot)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "False"]  # the caller's backend kept, pyplot never imported
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
