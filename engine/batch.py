"""Classify many messages at once: read them from a file, write label and probabilities per message as CSV."""

import csv
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from engine.atomic import write_text_atomic
from engine.classifier import Classifier, Prediction
from engine.data.prepared import MAX_SOURCE_BYTES, decode_utf8
from engine.data.table import find_text_column, table_reader
from engine.errors import DataError

MAX_MESSAGES = 10_000  # a batch beyond this belongs in the CLI, not a browser request


def read_messages_file(path: Path) -> list[str]:
    """Messages from a CSV/TSV with a text column (and optionally a label column), or one per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: give a text file with one message per line, or a CSV with a text column")
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise DataError(f"{path.name} is over the {MAX_SOURCE_BYTES:,}-byte limit: split it into smaller files")
    text = decode_utf8(path.read_bytes(), path.name)
    header = find_text_column(text.split("\n", 1)[0].removesuffix("\r"))
    if header is not None:  # a header row naming the text column
        delimiter, column = header
        try:
            rows = list(table_reader(text, delimiter))
        except csv.Error as error:
            raise DataError(f"{path.name}: {error}; check the quotes") from None
        messages = [row[column] for row in rows[1:] if len(row) > column and row[column].strip()]
    else:
        messages = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not messages:
        raise DataError(f"{path.name} holds no messages: put one message per line")
    if len(messages) > MAX_MESSAGES:
        raise DataError(f"{path.name} holds {len(messages):,} messages, over the limit of {MAX_MESSAGES:,}: split the file")
    return messages


def predictions_table(messages: Sequence[str], predictions: Sequence[Prediction], labels: Sequence[str]) -> pd.DataFrame:
    """One row per message: the message, its label, and the probability of every class."""
    return pd.DataFrame(
        {
            "message": list(messages),
            "label": [p.label for p in predictions],
            **{f"p_{name}": [round(p.probabilities[name], 6) for p in predictions] for name in labels},
            "truncated": [p.truncated for p in predictions],
        }
    )


def classify_file(classifier: Classifier, source: Path, destination: Path) -> pd.DataFrame:
    """Classify every message of `source` and write the table to `destination` (CSV, atomically)."""
    messages = read_messages_file(source)
    table = predictions_table(messages, classifier.classify(messages), classifier.config.labels)
    write_text_atomic(Path(destination), table.to_csv(index=False))
    return table
