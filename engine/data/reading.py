"""Reading a message file's bytes: the SMS collection's `label<TAB>text` lines, faithfully or as the
book reads them, or a headered CSV/TSV of your own (engine.data.table).

The book reads the SMS file with pandas' default CSV quoting, which takes a `"` at the start of a
message as an opening quote: one message swallows the two lines after it (5,572 messages, not
5,574) and the quotes around other texts disappear. The faithful reading keeps every line as
written; the `book` preset reads as the book does, so that its splits are the book's.
"""

import io
from typing import Literal

import pandas as pd

from engine.config import LABELS, MAX_LABEL_CHARS, Parse
from engine.data.table import clean_label, header_columns, parse_table
from engine.errors import DataError

# How a file's messages were read: "faithful" or "book" (see above), "table" (your own headered file,
# read by its header whatever the parse), or "given" (three split CSVs alone, used as they are).
Reading = Literal["faithful", "book", "table", "given"]

# How each reading of the SMS file is put in words, on the Data tab and in messages.
READING_WORDS: dict[str, str] = {
    "faithful": "line by line, each line one message as written",
    "book": "as the book reads it (pandas' CSV quoting, which joins a few lines)",
    "table": "by its header row",
    "given": "as three ready-made splits",
}


def parse_messages(raw: bytes, origin: str = "data") -> pd.DataFrame:
    """Parse `label<TAB>text` lines into a frame with string columns Label and Text.

    Quotes are not special (a message may start with `"`), tabs after the first belong to the text,
    CRLF endings and blank lines are tolerated. (A file whose first line is a header goes to
    engine.data.table instead: see `parse_source`.)

    Raises:
        DataError: not UTF-8, a line without a tab, or a label other than ham/spam.
    """
    text = decode_utf8(raw, origin)
    labels, texts = [], []
    # Split on "\n" only: str.splitlines would also break at U+0085 and friends, which occur in messages.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        label, tab, message = line.partition("\t")
        if not tab:
            raise DataError(
                f"{origin}, line {number}: no tab between label and message; expected 'ham<TAB>text' or 'spam<TAB>text' lines, "
                "or a CSV/TSV whose first line names a text and a label column"
            )
        # A byte-order mark or a stray space is no part of the label; a long one is no label at all (not cleaned: refused below).
        label = clean_label(label).lower() if len(label) <= 10 * MAX_LABEL_CHARS else label
        if label not in LABELS:
            raise DataError(
                f"{origin}, line {number}: unknown label {label[:20]!r}; every line must start with ham or spam "
                "(for other labels, start the file with a header row such as 'label<TAB>text')"
            )
        labels.append(label)
        texts.append(message)
    if not labels:
        raise DataError(f"{origin} holds no messages: expected lines of 'ham<TAB>text' or 'spam<TAB>text'")
    return pd.DataFrame({"Label": labels, "Text": texts})


def decode_utf8(raw: bytes, origin: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{origin} is not UTF-8 text (bad byte on line {line}): save it as UTF-8 and try again") from None


def parse_messages_as_book(raw: bytes, origin: str = "data") -> pd.DataFrame:
    """`label<TAB>text` lines read exactly as the book reads them: `pandas.read_csv(sep="\\t",
    header=None, names=["Label", "Text"])` with its default quoting.

    A `"` at the start of a field opens a quoted field, which runs to the closing quote across
    line breaks, and the quotes around a text are consumed (`""` inside read as `"`). On the SMS
    collection that gives 5,572 messages where the faithful parse finds 5,574: a quote opened on
    one line swallows the next two. Labels are taken as written, as the book takes them.

    Raises:
        DataError: not UTF-8, a line this reading cannot take, a label other than ham/spam, or an empty text.
    """
    decode_utf8(raw, origin)  # the same message for a file that is not UTF-8
    advice = "the recommended preset reads each line as written"
    try:
        frame = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, names=["Label", "Text"])
    except pd.errors.EmptyDataError:
        raise DataError(f"{origin} holds no messages: expected lines of 'ham<TAB>text' or 'spam<TAB>text'") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise DataError(f"{origin} cannot be read as the book reads it ({str(error).strip()}): {advice}") from None
    if not isinstance(frame.index, pd.RangeIndex):  # more fields than names: pandas makes the first ones an index
        raise DataError(f"{origin}: a line holds more than one tab, which the book's reading cannot take: {advice}")
    for number, (label, text) in enumerate(zip(frame["Label"], frame["Text"], strict=True), start=1):
        if label not in LABELS:
            raise DataError(
                f"{origin}, message {number}: unknown label {str(label)[:20]!r}; the book's reading needs every line to start "
                f"with ham or spam as written: {advice}"
            )
        if not isinstance(text, str):
            raise DataError(f"{origin}, message {number} has no text, which the book's code cannot take: {advice}")
    return frame


def parse_source(raw: bytes, origin: str, parse: Parse = "faithful") -> pd.DataFrame:
    """A headered CSV/TSV (any labels) or the SMS collection's headerless `label<TAB>text` lines,
    read faithfully or as the book reads them (`parse`; a headered file is read by its header either way)."""
    text = decode_utf8(raw, origin)
    if starts_with_header(text):
        return parse_table(text, origin)
    return parse_messages_as_book(raw, origin) if parse == "book" else parse_messages(raw, origin)


def starts_with_header(text: str) -> bool:
    return header_columns(text.split("\n", 1)[0].removesuffix("\r")) is not None
