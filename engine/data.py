"""The SMS Spam Collection: fetch or read it, parse every message, balance, split, save, describe."""

import io
import json
import statistics
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engine.atomic import write_text_atomic
from engine.config import LABELS
from engine.download import ProgressCallback, download_first_valid
from engine.errors import DataError
from engine.quality import deduplicate as drop_duplicates
from engine.quality import duplicate_report
from engine.tokenizer import encode

PRIMARY_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"
SOURCES: tuple[str, ...] = (PRIMARY_URL, BACKUP_URL)
MEMBER = "SMSSpamCollection"
ZIP_NAME = "sms_spam_collection.zip"
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
SUMMARY_FILE = "summary.json"
MAX_SOURCE_BYTES = 50 * 1024 * 1024  # the real file is 0.5 MB; anything far larger is not it


@dataclass(frozen=True)
class Splits:
    """Three frames with columns Label (0 ham, 1 spam) and Text."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]


@dataclass(frozen=True)
class LengthStats:
    min: int
    mean: float
    median: float
    max: int


@dataclass(frozen=True)
class DataSummary:
    """What `python -m engine data --json` prints, and what the app shows."""

    source: str
    messages: int
    ham: int
    spam: int
    balanced: int
    train: int
    validation: int
    test: int
    longest_train_tokens: int
    token_lengths: dict[str, LengthStats]  # per split
    spam_fraction: dict[str, float]  # per split
    deduplicated: bool = False  # repeated (label, text) pairs were dropped before balancing
    duplicates: dict[str, Any] = field(default_factory=dict)  # DuplicateReport of the parsed file

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreparedData:
    folder: Path
    splits: Splits
    summary: DataSummary


def parse_messages(raw: bytes, origin: str = "data") -> pd.DataFrame:
    """Parse `label<TAB>text` lines into a frame with string columns Label and Text.

    Quotes are not special (a message may start with `"`), tabs after the first belong to the text,
    CRLF endings and blank lines are tolerated, and a `label<TAB>text` header row is skipped.

    Raises:
        DataError: not UTF-8, a line without a tab, or a label other than ham/spam.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{origin} is not UTF-8 text (bad byte on line {line}): save it as UTF-8 and try again") from None
    labels, texts = [], []
    # Split on "\n" only: str.splitlines would also break at U+0085 and friends, which occur in messages.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        label, tab, message = line.partition("\t")
        if not tab:
            raise DataError(f"{origin}, line {number}: no tab between label and message; expected 'ham<TAB>text' or 'spam<TAB>text'")
        label = label.strip().lower()
        if number == 1 and label in ("label", "class", "category", "v1"):
            continue
        if label not in LABELS:
            raise DataError(f"{origin}, line {number}: unknown label {label[:20]!r}; every line must start with ham or spam")
        labels.append(label)
        texts.append(message)
    if not labels:
        raise DataError(f"{origin} holds no messages: expected lines of 'ham<TAB>text' or 'spam<TAB>text'")
    return pd.DataFrame({"Label": labels, "Text": texts})


def read_source_file(path: Path) -> pd.DataFrame:
    """Parse a local zip (UCI layout) or tab-separated file."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: give the SMS Spam Collection zip or its tab-separated file")
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise DataError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_SOURCE_BYTES:,}-byte limit for a message file")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04" or path.suffix.lower() == ".zip":
        raw = _zip_member(raw, path.name)
    elif raw.lstrip()[:1] == b"<":
        raise DataError(f"{path.name} is an HTML page, not the dataset: download the zip again or use its tab-separated file")
    return parse_messages(raw, path.name)


def _zip_member(raw: bytes, name: str) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == MEMBER]
            if not members:
                raise DataError(f"{name} has no {MEMBER} file inside: use the SMS Spam Collection zip from UCI")
            return archive.read(members[0])
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
        hint = "it is an HTML page" if raw.lstrip()[:1] == b"<" else f"{error}"
        raise DataError(f"{name} is not a valid zip ({hint}): download it again") from None


def validate_zip(path: Path) -> None:
    """Raise DataError unless `path` is a zip whose SMSSpamCollection parses."""
    _zip_member(path.read_bytes(), path.name)


def balance(messages: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    """Undersample ham to the spam count, exactly as the book (pandas `sample`, seed 123)."""
    spam = messages[messages["Label"] == "spam"]
    ham = messages[messages["Label"] == "ham"]
    if spam.empty or ham.empty:
        missing = "spam" if spam.empty else "ham"
        raise DataError(f"the data has no {missing} messages: both classes are needed to train a classifier")
    n = min(len(spam), len(ham))
    balanced = pd.concat([ham.sample(n, random_state=seed), spam.sample(n, random_state=seed) if len(spam) > n else spam])
    return balanced.assign(Label=balanced["Label"].map({name: i for i, name in enumerate(LABELS)}))


def split(frame: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123) -> Splits:
    """Shuffle (seeded) and cut into train / validation / test, as the book does."""
    shuffled = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * train_frac)
    validation_end = train_end + int(len(shuffled) * validation_frac)
    splits = Splits(
        shuffled[:train_end].reset_index(drop=True),
        shuffled[train_end:validation_end].reset_index(drop=True),
        shuffled[validation_end:].reset_index(drop=True),
    )
    empty = [name for name, part in splits.items() if part.empty]
    if empty:
        raise DataError(f"too few messages ({len(frame)}) to fill the {', '.join(empty)} split: use a larger dataset")
    return splits


def token_length_stats(texts: Sequence[str]) -> LengthStats:
    lengths = [len(encode(t)) for t in texts]
    return LengthStats(min(lengths), round(statistics.fmean(lengths), 2), float(statistics.median(lengths)), max(lengths))


def summarize(source: str, messages: pd.DataFrame, splits: Splits, deduplicated: bool = False) -> DataSummary:
    lengths = {name: token_length_stats(part["Text"].tolist()) for name, part in splits.items()}
    return DataSummary(
        source=source,
        messages=len(messages),
        ham=int((messages["Label"] == "ham").sum()),
        spam=int((messages["Label"] == "spam").sum()),
        balanced=sum(len(part) for _, part in splits.items()),
        train=len(splits.train),
        validation=len(splits.validation),
        test=len(splits.test),
        longest_train_tokens=lengths["train"].max,
        token_lengths=lengths,
        spam_fraction={name: round(float(part["Label"].mean()), 4) for name, part in splits.items()},
        deduplicated=deduplicated,
        duplicates=duplicate_report(messages, splits).to_dict(),
    )


def save_splits(splits: Splits, folder: Path) -> None:
    """Write train.csv, validation.csv, test.csv (Label, Text), as the book does."""
    for name, part in splits.items():
        write_text_atomic(folder / f"{name}.csv", part.to_csv(index=False))


def load_splits(folder: Path) -> Splits:
    """Read the three CSVs written by `save_splits`."""
    frames = []
    for name in SPLIT_NAMES:
        path = Path(folder) / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{path} is missing: run `python -m engine data --cache {folder}` first")
        try:
            frame = pd.read_csv(path, dtype={"Label": int, "Text": str}, keep_default_na=False)
        except (ValueError, pd.errors.ParserError) as error:
            raise DataError(f"{path} is not a Label,Text CSV ({error}): prepare the data again") from None
        if list(frame.columns) != ["Label", "Text"] or not frame["Label"].isin(range(len(LABELS))).all():
            raise DataError(f"{path} must have columns Label (0 or 1) and Text: prepare the data again")
        frames.append(frame)
    return Splits(*frames)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch_zip(cache: Path, urls: Sequence[str], on_progress: ProgressCallback | None = None) -> tuple[Path, str]:
    """The cached zip, downloading it (first working URL) if it is not there; returns (path, origin)."""
    target = cache / ZIP_NAME
    if target.is_file():
        try:
            validate_zip(target)
            return target, str(target)
        except DataError:
            pass  # a damaged cache entry is replaced below
    used = download_first_valid(urls, target, validate_zip, on_progress, max_bytes=MAX_SOURCE_BYTES)
    return target, used


def prepare(
    source: str | None = None,
    cache: Path | str = "data_cache",
    on_progress: ProgressCallback | None = None,
    seed: int = 123,
    urls: Sequence[str] | None = None,
    deduplicate: bool = False,
) -> PreparedData:
    """Get the data from `source` (None: `urls`, default the UCI URL then its backup; a URL; a local zip/TSV; a prepared folder),
    then balance, split and save the splits into `cache`. With `deduplicate`, repeated (label, text)
    pairs are dropped first, so no text can sit in two splits.

    Raises:
        DataError: the source is unreadable or holds the wrong content.
        DownloadError: no URL could be downloaded.
    """
    cache = Path(cache)
    if source is not None and not is_url(source) and Path(source).is_dir():
        folder = Path(source)
        if (folder / "train.csv").is_file():
            splits = load_splits(folder)
            saved = load_summary(folder)
            if saved is not None and (saved.train, saved.validation, saved.test) == tuple(len(p) for _, p in splits.items()):
                return PreparedData(folder, splits, saved)
            # Without the summary of the original file, describe what the splits hold.
            everything = pd.concat([part for _, part in splits.items()])
            labelled = everything.assign(Label=everything["Label"].map(dict(enumerate(LABELS))))
            return PreparedData(folder, splits, summarize(str(folder), labelled, splits))
        raise DataError(f"{folder} is a folder without train.csv: give a folder made by `python -m engine data`, a zip or a TSV")
    if source is None or is_url(source):
        zip_path, origin = fetch_zip(cache, [source] if source else (urls or SOURCES), on_progress)
        messages = read_source_file(zip_path)
    else:
        origin = source
        messages = read_source_file(Path(source))
    kept = drop_duplicates(messages) if deduplicate else messages
    splits = split(balance(kept, seed), seed=seed)
    summary = summarize(origin, messages, splits, deduplicated=deduplicate)
    save_splits(splits, cache)
    write_text_atomic(cache / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")
    return PreparedData(cache, splits, summary)


def load_summary(folder: Path) -> DataSummary | None:
    """The summary `prepare` saved beside the splits (counts of the whole original file), if readable."""
    try:
        data = json.loads((Path(folder) / SUMMARY_FILE).read_text(encoding="utf-8"))
        data["token_lengths"] = {name: LengthStats(**stats) for name, stats in data["token_lengths"].items()}
        return DataSummary(**data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing or from another version: the caller recomputes what it can

