"""Draw LoRA Lab's icon, assets/lora-lab.png (the browser tab, and the desktop app installed from the browser).

The picture is the app's own: a large frozen weight matrix W and, beside it, the two thin matrices A and
B that LoRA trains, in the Model & LoRA tab's colours. Run `python scripts/make_icon.py` to draw it again.
"""

import sys
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ui.lora_picture import FROZEN, TRAINED  # noqa: E402

TARGET = REPO / "assets" / "lora-lab.png"
BACKGROUND, INK = "#1f2a44", "#ffffff"
PIXELS = 512


def draw_icon(target: Path = TARGET) -> Path:
    figure = Figure(figsize=(1, 1), dpi=PIXELS)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.axis("off")
    axis.add_patch(FancyBboxPatch((0.02, 0.02), 0.96, 0.96, boxstyle="round,pad=0,rounding_size=0.18", color=BACKGROUND))
    axis.add_patch(Rectangle((0.14, 0.16), 0.46, 0.46, color=FROZEN))  # W: frozen, large
    axis.add_patch(Rectangle((0.68, 0.16), 0.08, 0.46, color=TRAINED))  # A: d × r, tall and thin
    axis.add_patch(Rectangle((0.14, 0.70), 0.46, 0.08, color=TRAINED))  # B: r × k, wide and flat
    axis.text(0.72, 0.74, "+", color=INK, fontsize=13, fontweight="bold", ha="center", va="center")
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, transparent=True)
    return target


if __name__ == "__main__":
    print(draw_icon())
