"""Your own data: a CSV or TSV file with a header row naming a text column and a label column.

Any label names work, from two classes to MAX_CLASSES; they become the classifier's classes in sorted order.
"""

import csv
import io
import unicodedata
from typing import Any

import pandas as pd

from engine.config import LABELS, MAX_CLASSES, MAX_LABEL_CHARS
from engine.errors import DataError

TEXT_COLUMNS = ("text", "message", "sms", "content", "v2")
LABEL_COLUMNS = ("label", "class", "category", "target", "v1")


def clean_label(text: str) -> str:
    """A class name as written, minus what no one sees: Unicode composed (NFC), format characters (a byte-order
    mark, zero-width spaces) dropped, each run of whitespace one space, none at the ends."""
    visible = "".join(char for char in unicodedata.normalize("NFC", text) if unicodedata.category(char) != "Cf")
    return " ".join(visible.split())


def label_problem(raw: str) -> str | None:
    """Why `raw` cannot be a class name (None when it can): too long. Refused before any work on a long one."""
    length = len(raw) if len(raw) > 10 * MAX_LABEL_CHARS else len(clean_label(raw))
    if length > MAX_LABEL_CHARS:
        return f"a label of {length:,} characters; class names are at most {MAX_LABEL_CHARS}: check that the label column holds class names"
    return None


def header_columns(first_line: str) -> tuple[str, int, int] | None:
    """(delimiter, label column, text column) when `first_line` is a recognisable header, else None."""
    found = find_text_column(first_line)
    if found is None:
        return None
    delimiter, text = found
    names = _field_names(first_line, delimiter)
    label = next((names.index(n) for n in LABEL_COLUMNS if n in names), None)
    return None if label is None else (delimiter, label, text)


def find_text_column(first_line: str) -> tuple[str, int] | None:
    """(delimiter, text column) when `first_line` is a header naming a text column, else None."""
    delimiter = "\t" if "\t" in first_line else ","
    names = _field_names(first_line, delimiter)
    text = next((names.index(n) for n in TEXT_COLUMNS if n in names), None)
    if text is None or set(LABELS) & set(names):  # an SMS data line, not a header
        return None
    return delimiter, text


def _field_names(first_line: str, delimiter: str) -> list[str]:
    return [name.strip().strip('"').lower() for name in first_line.split(delimiter)]


def table_reader(text: str, delimiter: str) -> Any:  # a csv reader: its line_num names a bad line
    """Rows of a headered table: TSV fields are taken literally, like the SMS collection; CSV fields may be quoted."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)


def parse_table(text: str, origin: str) -> pd.DataFrame:
    """Rows of (Label, Text) from a headered CSV/TSV; labels are cleaned (`clean_label`), texts kept as written.

    Raises:
        DataError: no usable header, a short row, an empty text or label, a label over MAX_LABEL_CHARS, more than
            MAX_CLASSES labels (the line is named).
    """
    first_line = text.split("\n", 1)[0].removesuffix("\r")
    columns = header_columns(first_line)
    if columns is None:
        raise DataError(
            f"{origin}: the first line must name a text column ({', '.join(TEXT_COLUMNS[:3])}) and a label column "
            f"({', '.join(LABEL_COLUMNS[:3])}), e.g. 'label,text'"
        )
    delimiter, label_column, text_column = columns
    reader = table_reader(text, delimiter)
    next(reader)
    labels, texts = [], []
    seen: set[str] = set()
    try:
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            if len(row) <= max(label_column, text_column):
                raise DataError(f"{origin}, line {reader.line_num}: expected at least {max(label_column, text_column) + 1} fields, found {len(row)}")
            problem = label_problem(row[label_column])
            if problem:
                raise DataError(f"{origin}, line {reader.line_num}: {problem}")
            label, message = clean_label(row[label_column]), row[text_column]
            if not label or not message.strip():
                raise DataError(f"{origin}, line {reader.line_num}: empty {'label' if not label else 'text'}: fill it in or delete the line")
            if label not in seen:
                seen.add(label)
                if len(seen) > MAX_CLASSES:  # stop at once: a column of free text would make thousands
                    raise DataError(
                        f"{origin}, line {reader.line_num}: more than {MAX_CLASSES} different labels (this one is {label[:40]!r}); LoRA Lab "
                        f"trains at most {MAX_CLASSES} classes: check that the label column holds class names, or merge rare classes"
                    )
            labels.append(label)
            texts.append(message)
    except csv.Error as error:
        raise DataError(f"{origin}, line {reader.line_num}: {error}; check the quotes on that line") from None
    if not labels:
        raise DataError(f"{origin} has a header but no rows")
    return pd.DataFrame({"Label": labels, "Text": texts})
