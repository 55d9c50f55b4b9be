"""Data quality: repeated messages within the collection and across the train/validation/test splits.

The SMS Spam Collection repeats hundreds of texts; a test message that also sits in the training
split measures memory, not generalisation.
"""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from engine.data.prepared import Splits


@dataclass(frozen=True)
class DuplicateReport:
    messages: int
    distinct_texts: int
    repeated_texts: int  # texts that occur more than once
    extra_copies: int  # messages that de-duplication would drop
    conflicting_labels: int  # texts labelled both ham and spam
    across_splits: dict[str, int]  # "train & test": distinct texts present in both
    most_repeated: list[tuple[str, int]]  # (text, copies), most copies first

    def to_dict(self) -> dict:
        """JSON-shaped: pairs become lists, so a saved and reloaded report compares equal."""
        return {**asdict(self), "most_repeated": [[text, copies] for text, copies in self.most_repeated]}


def duplicate_report(messages: pd.DataFrame, splits: "Splits", top: int = 10) -> DuplicateReport:
    counts = messages["Text"].value_counts()
    labels_per_text = messages.groupby("Text")["Label"].nunique()
    texts = {name: set(part["Text"]) for name, part in splits.items()}
    pairs = (("train", "validation"), ("train", "test"), ("validation", "test"))
    return DuplicateReport(
        messages=len(messages),
        distinct_texts=len(counts),
        repeated_texts=int((counts > 1).sum()),
        extra_copies=int(len(messages) - len(counts)),
        conflicting_labels=int((labels_per_text > 1).sum()),
        across_splits={f"{a} & {b}": len(texts[a] & texts[b]) for a, b in pairs},
        most_repeated=[(text, int(n)) for text, n in counts[counts > 1].head(top).items()],
    )


def deduplicate(messages: pd.DataFrame) -> pd.DataFrame:
    """Keep the first copy of each (label, text) pair, in file order."""
    return messages.drop_duplicates(subset=["Label", "Text"], keep="first").reset_index(drop=True)
