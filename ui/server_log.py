"""The server log: one line for each ordinary user error, a traceback only for real faults.

Gradio prints the traceback of every exception a handler raises, a visitor's empty message included,
which buries real faults under pages of noise. Every handler of the app is wrapped once the UI is
built: a `gr.Error` (what the handlers raise for a problem the visitor can fix) is logged as one line
and reaches the page as before; anything else keeps its traceback.
"""

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from engine.failure import one_line

log = logging.getLogger("lora_lab.app")


def log_refusal(what: str, problem: str) -> None:
    """The one line of a user error: what was refused, and why."""
    log.warning("refused (%s): %s", what, one_line(problem))


def one_line_for_user_errors(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn`, logging a gr.Error it raises as one line instead of letting Gradio print its traceback."""

    @functools.wraps(fn)  # Gradio reads the signature (progress trackers, keyword inputs) through __wrapped__
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as error:
            error.print_exception = False
            log_refusal(name, str(error.message))
            raise

    return wrapper


def log_user_errors_in_one_line(demo: gr.Blocks) -> None:
    """Wrap every plain handler of `demo` (generators and coroutines are left as they are: none raise user errors here)."""
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn):
            continue
        block_fn.fn = one_line_for_user_errors(fn, block_fn.api_name if isinstance(block_fn.api_name, str) else block_fn.name)
