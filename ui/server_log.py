"""The server log: one line for each refused input, a traceback only for real faults.

Gradio prints the traceback of every exception raised while it answers an event, a visitor's empty
message included, which buries real faults under pages of noise. Here the app's Blocks is told
apart in two steps:
- reading the visitor's values (Gradio's preprocessing: a value outside a dropdown's choices, a path
  that was never uploaded, a URL given as a file, too few values): whatever fails there is the
  input's fault; it is logged as one line and reaches the visitor as a message (gr.Error);
- running a handler: a gr.Error (what the handlers raise for a problem the visitor can fix) is
  logged as one line and reaches the page as before; anything else keeps its traceback.
The HTTP guard (ui.http_guard) logs its own refusals the same way.
"""

import logging
from typing import Any

import gradio as gr

from engine.failure import one_line

log = logging.getLogger("lora_lab.app")
MAX_LOGGED_CHARS = 300  # of a refused input's message: the visitor chose its text


def log_refusal(what: str, problem: str) -> None:
    """The one line of a user error: what was refused, and why."""
    log.warning("refused (%s): %s", what, one_line(problem)[:MAX_LOGGED_CHARS])


def log_user_errors_in_one_line(demo: gr.Blocks) -> None:
    """Wrap `demo`'s reading of inputs and its calls of handlers (plain, generators and coroutines alike)."""
    preprocess, call = demo.preprocess_data, demo.call_function

    async def preprocess_refusing_in_one_line(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess(block_fn, *args, **kwargs)
        except Exception as error:
            problem = str(error.message) if isinstance(error, gr.Error) else f"{type(error).__name__}: {error}"
            log_refusal(_name(demo, block_fn), problem)
            raise _quiet(error if isinstance(error, gr.Error) else gr.Error(f"refused: {one_line(problem)[:MAX_LOGGED_CHARS]}")) from None

    async def call_logging_user_errors(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await call(block_fn, *args, **kwargs)
        except gr.Error as error:
            log_refusal(_name(demo, block_fn), str(error.message))
            raise _quiet(error) from None

    # On the instance: Gradio calls both through `self` (a Blocks subclass would change what Gradio builds).
    demo.preprocess_data = preprocess_refusing_in_one_line  # type: ignore[method-assign]
    demo.call_function = call_logging_user_errors  # type: ignore[method-assign]


def _quiet(error: gr.Error) -> gr.Error:
    error.print_exception = False
    return error


def _name(demo: gr.Blocks, block_fn: Any) -> str:
    block_fn = demo.fns.get(block_fn, block_fn) if isinstance(block_fn, int) else block_fn
    api_name = getattr(block_fn, "api_name", None)
    return api_name if isinstance(api_name, str) else str(getattr(block_fn, "name", block_fn))
