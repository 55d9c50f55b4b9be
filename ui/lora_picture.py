"""A picture of what LoRA does to one layer, drawn to scale in HTML: the frozen W beside the small A and B it trains.

For a layer that maps a width-d input to a width-k output, x · W (d × k) stays frozen and LoRA adds
x · A (d × r) · B (r × k), scaled: only A and B are trained. The boxes keep the layer's proportions,
so the thin A and B next to the large W show what the rank costs. The counts come from the engine.
"""

import html

from engine.params import LoRAShape
from ui.views import plural

SIDE_PX = 150  # the longer side of W (a phone makes it smaller: --lora-side in ui/views.py's APP_CSS)
MIN_PX = 3  # a rank-1 matrix is still visible

# The Linear layers LoRA can adapt, in words a non-programmer can follow (the code name in brackets).
LAYER_NAMES = {
    "attn.q_proj": "attention: query",
    "attn.k_proj": "attention: key",
    "attn.v_proj": "attention: value",
    "attn.c_proj": "attention: output",
    "mlp.c_fc": "feed-forward: expand",
    "mlp.c_proj": "feed-forward: contract",
    "score": "class head",
}
FROZEN, TRAINED = "#b8c4d6", "#d62728"


def layer_label(target: str) -> str:
    """ "attention: query (attn.q_proj)"; a kind with no plain name (embeddings, layer norms) as it is."""
    return f"{LAYER_NAMES[target]} ({target})" if target in LAYER_NAMES else target


def _length(share: float) -> str:
    """A side of a box: `share` of the picture's longest side, never thinner than MIN_PX."""
    return f"max({MIN_PX}px, calc(var(--lora-side, {SIDE_PX}px) * {share:.4f}))"


def _box(width: float, height: float, colour: str, name: str, dims: str, count: int, note: str) -> str:
    return (
        f"<div class='matrix {name.lower()}' style='display:flex;flex-direction:column;align-items:center;gap:4px'>"
        f"<div style='width:{_length(width)};height:{_length(height)};background:{colour};border-radius:2px'></div>"
        f"<div style='font-size:0.85em;text-align:center;line-height:1.3'><b>{name}</b> {dims}<br>{count:,}<br><span style='opacity:0.75'>{note}</span></div>"
        "</div>"
    )


def lora_picture_html(shape: LoRAShape, scale: float, layers: int, model: str, adapted: bool) -> str:
    """W, A and B of one layer to scale, their counts, and what they come to over the whole model.

    `scale` is the factor on A·B (alpha, or alpha/rank); `layers` how many such layers the model has;
    `adapted` whether the chosen targets include this layer.
    """
    longest = max(shape.d, shape.k)
    w_width, w_height = shape.k / longest, shape.d / longest
    r = shape.rank / longest
    op = "font-size:1.4em;align-self:center;padding:0 4px;opacity:0.8;white-space:nowrap"
    group = "display:flex;align-items:flex-start;gap:8px;flex-wrap:nowrap"
    frozen = f"<div style='{op}'>x ·</div>" + _box(w_width, w_height, FROZEN, "W", f"{shape.d:,} × {shape.k:,}", shape.frozen, "frozen")
    added = (
        f"<div style='{op}'>+ {scale:g} × x ·</div>"
        + _box(r, w_height, TRAINED, "A", f"{shape.d:,} × {shape.rank}", shape.a, "trained")
        + f"<div style='{op}'>·</div>"
        + _box(w_width, r, TRAINED, "B", f"{shape.rank} × {shape.k:,}", shape.b, "trained")
    )
    # Two groups that never break inside: on a narrow screen "+ s × x · A · B" goes under "x · W", in that order.
    boxes = f"<div style='{group}'>{frozen}</div><div style='{group}'>{added}</div>"
    trained = shape.a + shape.b
    name = html.escape(layer_label(shape.target))
    where = (
        f"{html.escape(model)} has {plural(layers, 'such layer')}: LoRA trains {layers * trained:,} weights there."
        if adapted
        else "This layer is not among the layers LoRA adapts now (Advanced): it stays entirely frozen."
    )
    caption = (
        f"<b>{name}</b>: the frozen weight matrix W holds {shape.frozen:,} numbers. LoRA leaves it as it is and trains "
        f"A and B instead: {shape.a:,} + {shape.b:,} = <b>{trained:,}</b>, {100 * shape.share:.1f} % of W. "
        f"Their product A·B has W's shape and is added to W's output, scaled by {scale:g}. Raise the rank and A and B grow; W never changes. {where}"
    )
    return (
        f"<div class='lora-picture' data-rank='{shape.rank}' data-target='{html.escape(shape.target)}'>"
        f"<div style='display:flex;align-items:flex-start;gap:8px;flex-wrap:wrap;overflow-x:auto;margin-bottom:8px'>{boxes}</div>"
        f"<div style='font-size:0.9em;line-height:1.45'>{caption}</div></div>"
    )
