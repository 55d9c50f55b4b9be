"""What a visitor can reach and send, checked before LoRA Lab acts on it.

Uploads are read only from Gradio's own temporary copies (a typed path or a URL never reaches the
file system or the network) and a refused one is deleted at once, messages must hold visible text,
out-of-memory failures become advice, engine errors become toasts, and the command line warns when
the app is reachable by others. (ui.http_guard fences what reaches Gradio's routes themselves.)
"""

import argparse
import contextlib
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from engine.failure import failure_of, one_line
from ui.upload_space import charge_written, forget_upload

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def user_error(error: Exception) -> gr.Error:
    """A toast with the engine's own message; the app keeps running."""
    return gr.Error(one_line(str(error)), duration=None)


@contextlib.contextmanager
def engine_errors_as_toasts(device: str, doing: str) -> Iterator[None]:
    """Inside: an engine error becomes a toast with its own message, running out of memory becomes
    advice (`doing` says what ran out, e.g. "classifying"); anything else is a bug: logged, and it propagates."""
    try:
        yield
    except Exception as error:
        failure = failure_of(error, device, doing)
        if not failure.users_to_fix:
            raise
        raise gr.Error(failure.message, duration=None) from None


def uploaded_file(**options: Any) -> gr.File:
    """A gr.File that takes bytes sent from the visitor's computer only.

    Gradio would fetch a URL given in place of an upload (from a script, say) on the server's
    behalf; this one refuses to, so no visitor can make the app reach the network. (The methods
    are wrapped on the instance: a gr.File subclass would make Gradio write an app.pyi stub.)
    """
    component = gr.File(**options)
    move_async, move = component.async_move_resource_to_block_cache, component.move_resource_to_block_cache

    async def move_async_refusing_urls(url_or_file_path: str | Path | None) -> str | None:
        refuse_url(url_or_file_path)
        return await move_async(url_or_file_path)

    def move_refusing_urls(url_or_file_path: str | Path | None) -> str | None:
        refuse_url(url_or_file_path)
        return move(url_or_file_path)

    component.async_move_resource_to_block_cache = move_async_refusing_urls  # type: ignore[method-assign]
    component.move_resource_to_block_cache = move_refusing_urls  # type: ignore[method-assign]
    return component


def refuse_url(value: str | Path | None) -> None:
    if isinstance(value, str) and "://" in value:
        raise gr.Error("LoRA Lab does not fetch URLs given as uploads: download the file yourself, then upload it from your computer")


def upload_folder() -> Path:
    """Where Gradio keeps its temporary copies of uploaded files (GRADIO_TEMP_DIR, or the system temp dir)."""
    return Path(gr.utils.get_upload_folder()).resolve()


def uploaded_path(path: str | None, what: str) -> Path:
    """The path of a file a visitor uploaded; anything outside Gradio's upload folder is refused.

    Handlers get paths from Gradio, which copies every upload into its folder first; a path that points
    anywhere else (a script sending a typed path, say) must not reach the file system.
    """
    if not path:
        raise gr.Error(f"choose {what} first")
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(upload_folder()) or resolved.is_dir():
        raise gr.Error(f"only files uploaded through this page are read: upload {what}")
    if not resolved.is_file():
        raise gr.Error(f"the uploaded file is no longer on the server (uploads are deleted after an hour, refused ones at once): upload {what} again")
    return resolved


@contextlib.contextmanager
def deleted_if_refused(upload: Path) -> Iterator[None]:
    """Inside: if reading the uploaded file fails (any refusal), delete it; nothing refused is kept."""
    try:
        yield
    except BaseException:
        discard_upload(upload)
        raise


def discard_upload(upload: Path) -> None:
    """Delete an uploaded file (only ever one in Gradio's upload folder), and the folder Gradio made for it once empty."""
    upload = Path(upload).resolve()
    if not upload.is_relative_to(upload_folder()) or upload == upload_folder():
        return
    with contextlib.suppress(OSError):
        upload.unlink(missing_ok=True)
        forget_upload(upload)
        if upload.parent != upload_folder():
            upload.parent.rmdir()


def output_path(name: str) -> Path:
    """Where to write a file for a visitor to download (predictions): in the upload folder, in a folder of its own.

    Gradio serves a file already in its folder as it is (no copy elsewhere) and deletes it with the
    uploads, an hour after it was written and when the app stops.
    """
    return upload_folder() / f"lora-lab-{uuid.uuid4().hex}" / name


def written_output(path: Path) -> Path:
    """`path` (from `output_path`), now written: charged to the upload space like an upload."""
    charge_written(path)
    return path


def message_problem(message: object, number: int | None = None) -> str | None:
    """Why a message cannot be classified (None when it can): not text, or no visible character."""
    which = "the message" if number is None else f"line {number}"
    if not isinstance(message, str):
        return f"{which} is not text: send a string"
    if not any(not char.isspace() and unicodedata.category(char)[0] != "C" for char in message):
        what = "is empty" if not message.strip() else "holds only control characters"
        return f"{which} {what}: type a message to classify"
    return None


def parse_auth(value: str) -> tuple[str, str]:
    """"user:password" -> ("user", "password"); the password may itself contain colons."""
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD, both non-empty")
    return user, password


def exposure_warnings(host: str, share: bool, auth: tuple[str, str] | None) -> list[str]:
    """What to tell the person starting the app when others can reach it."""
    warnings = []
    if host not in LOCAL_HOSTS:
        warnings.append(f"listening on {host}: anyone who can reach this machine can use LoRA Lab, train on it and download its runs")
    if share:
        warnings.append("--share: a public gradio.live link will forward to this app through Gradio's servers; anyone with the link can use it")
    if warnings and auth is None:
        warnings.append("no login is asked: add --auth USER:PASSWORD (or set LORA_LAB_AUTH) on a shared machine")
    return warnings
