"""JSON that strict parsers accept: no NaN or Infinity, ever.

Python's json writes float("nan") as the bare word NaN, which JSON does not have; a metric that
cannot be computed (precision with no positive predictions, a loss over no messages) is written as
null instead.
"""

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """json.dumps of `finite(value)`; refuses to write NaN or Infinity whatever slips through."""
    return json.dumps(finite(value), allow_nan=False, **options)
