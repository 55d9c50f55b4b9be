"""The Data tab's token histogram: its legend must never hide bars."""

from pathlib import Path

from engine.data.prepared import prepare
from ui.data_tab import token_histogram


def test_the_legend_sits_off_the_bars(prepared_data: Path) -> None:
    figure = token_histogram(prepare(str(prepared_data), prepared_data))
    figure.canvas.draw()
    (axis,) = figure.axes
    legend = axis.get_legend().get_window_extent()
    bars = [patch.get_window_extent() for patch in axis.patches if patch.get_height() > 0]
    assert bars and not any(legend.overlaps(bar) for bar in bars)
    assert not legend.overlaps(axis.get_window_extent())  # outside the plotting area altogether
    assert [text.get_text() for text in axis.get_legend().get_texts()][:2] == ["ham", "spam"]
