"""LoRA Lab's web UI: one module per tab (layout, handlers and the frames they show) over one shared `Lab`.

`app.py` parses the command line and assembles the tabs; nothing here does tensor math or loads a
model at import.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no usage pings leave the machine
