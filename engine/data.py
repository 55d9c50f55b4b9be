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
from engine.table import header_columns, parse_table
from engine.tokenizer import encode

PRIMARY_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"
SOURCES: tuple[str, ...] = (PRIMARY_URL, BACKUP_URL)
MEMBER = "SMSSpamCollection"
ZIP_NAME = "sms_spam_collection.zip"
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
SUMMARY_FILE = "summary.json"
MAX_SOURCE_BYTES = 50 * 1024 * 1024  # the real file is 0.5 MB; anything far larger is not it
MAX_UNPACKED_BYTES = MAX_SOURCE_BYTES  # a zipped message file is held to the same size once inflated
UNPACK_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Splits:
    """Three frames with columns Label (0 ham, 1 spam) and Text."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: tuple[str, ...] = LABELS  # Label i means labels[i]

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
    labels: tuple[str, ...] = LABELS  # class names, in class-index order
    class_counts: dict[str, int] = field(default_factory=dict)  # messages per class in the parsed file
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
    CRLF endings and blank lines are tolerated. (A file whose first line is a header goes to
    engine.table instead: see `parse_source`.)

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
        label = label.strip().lower()
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


def parse_source(raw: bytes, origin: str) -> pd.DataFrame:
    """A headered CSV/TSV (any labels) or the SMS collection's headerless `label<TAB>text` lines."""
    text = decode_utf8(raw, origin)
    if header_columns(text.split("\n", 1)[0].removesuffix("\r")) is not None:
        return parse_table(text, origin)
    return parse_messages(raw, origin)


def label_names(messages: pd.DataFrame) -> tuple[str, ...]:
    """The class names: ham, spam for the SMS data (the book's 0 and 1), else the labels sorted."""
    found = set(messages["Label"])
    return LABELS if found <= set(LABELS) else tuple(sorted(found))


def read_source_file(path: Path) -> pd.DataFrame:
    """Parse a local zip (UCI layout), the SMS tab-separated file, or a headered CSV/TSV of your own."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: give the SMS Spam Collection zip or its tab-separated file")
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise DataError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_SOURCE_BYTES:,}-byte limit for a message file")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04" or path.suffix.lower() == ".zip":
        raw = _zip_member(raw, path.name)
    elif raw.lstrip()[:1] == b"<":
        raise DataError(f"{path.name} is an HTML page, not the dataset: download the zip again or use its tab-separated file")
    return parse_source(raw, path.name)


def _zip_member(raw: bytes, name: str) -> bytes:
    """The SMSSpamCollection member of a zip, inflated at most MAX_UNPACKED_BYTES bytes (a zip bomb stops there)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            members = [m for m in archive.infolist() if m.filename.rsplit("/", 1)[-1] == MEMBER]
            if not members:
                raise DataError(f"{name} has no {MEMBER} file inside: use the SMS Spam Collection zip from UCI")
            if members[0].file_size > MAX_UNPACKED_BYTES:  # what it says it holds: refused before inflating anything
                raise _too_big(name)
            return _inflate_capped(archive, members[0], name)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as error:  # RuntimeError: encrypted
        hint = "it is an HTML page" if raw.lstrip()[:1] == b"<" else f"{error}"
        raise DataError(f"{name} is not a valid zip ({hint}): download it again") from None


def _inflate_capped(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str) -> bytes:
    # The declared size may lie: count the bytes actually inflated and stop one past the limit.
    parts, total = [], 0
    with archive.open(member) as stream:
        while chunk := stream.read(min(UNPACK_CHUNK_BYTES, MAX_UNPACKED_BYTES + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > MAX_UNPACKED_BYTES:
                raise _too_big(name)
    return b"".join(parts)


def _too_big(name: str) -> DataError:
    return DataError(
        f"{name} unpacks to more than {MAX_UNPACKED_BYTES / 1024**2:,.0f} MB, the limit for a message file "
        "(the SMS Spam Collection is 0.5 MB): use a smaller file"
    )


def validate_zip(path: Path) -> None:
    """Raise DataError unless `path` (a download) is a zip holding an SMSSpamCollection within the size limit."""
    _zip_member(path.read_bytes(), "the downloaded file")  # `path` is a temporary: its name would mean nothing


def balance(messages: pd.DataFrame, seed: int = 123, labels: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Undersample every class to the smallest one's size and number the labels.

    For the SMS data this is the book's step exactly: 747 ham drawn with pandas `sample`
    (seed 123), followed by all 747 spam.
    """
    labels = labels or label_names(messages)
    parts = [messages[messages["Label"] == name] for name in labels]
    missing = [name for name, part in zip(labels, parts, strict=True) if part.empty]
    if missing or len(labels) < 2:
        what = f"no {missing[0]} messages" if missing else f"only one class ({labels[0]!r})"
        raise DataError(f"the data has {what}: at least two classes are needed to train a classifier")
    n = min(len(part) for part in parts)
    balanced = pd.concat([part.sample(n, random_state=seed) if len(part) > n else part for part in parts])
    return balanced.assign(Label=balanced["Label"].map({name: i for i, name in enumerate(labels)}))


def split(frame: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123, labels: tuple[str, ...] = LABELS) -> Splits:
    """Shuffle (seeded) and cut into train / validation / test, as the book does."""
    shuffled = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * train_frac)
    validation_end = train_end + int(len(shuffled) * validation_frac)
    splits = Splits(
        shuffled[:train_end].reset_index(drop=True),
        shuffled[train_end:validation_end].reset_index(drop=True),
        shuffled[validation_end:].reset_index(drop=True),
        labels,
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
    counts = messages["Label"].value_counts()
    positive = splits.labels.index("spam") if "spam" in splits.labels else 1
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
        spam_fraction={name: round(float((part["Label"] == positive).mean()), 4) for name, part in splits.items()},
        deduplicated=deduplicated,
        labels=splits.labels,
        class_counts={name: int(counts.get(name, 0)) for name in splits.labels},
        duplicates=duplicate_report(messages, splits).to_dict(),
    )


def save_splits(splits: Splits, folder: Path) -> None:
    """Write train.csv, validation.csv, test.csv (Label, Text), as the book does."""
    for name, part in splits.items():
        write_text_atomic(folder / f"{name}.csv", part.to_csv(index=False))


def load_splits(folder: Path, labels: tuple[str, ...] = LABELS) -> Splits:
    """Read the three CSVs written by `save_splits`; `labels` names the class indices."""
    frames = []
    for name in SPLIT_NAMES:
        path = Path(folder) / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{path} is missing: run `python -m engine data --cache {folder}` first")
        try:
            frame = pd.read_csv(path, dtype={"Label": int, "Text": str}, keep_default_na=False)
        except (ValueError, pd.errors.ParserError) as error:
            raise DataError(f"{path} is not a Label,Text CSV ({error}): prepare the data again") from None
        if list(frame.columns) != ["Label", "Text"] or not frame["Label"].isin(range(len(labels))).all():
            raise DataError(f"{path} must have columns Label (0 to {len(labels) - 1}) and Text: prepare the data again")
        frames.append(frame)
    return Splits(*frames, labels)


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
            saved = load_summary(folder)
            splits = load_splits(folder, saved.labels if saved else LABELS)
            if saved is not None and (saved.train, saved.validation, saved.test) == tuple(len(p) for _, p in splits.items()):
                return PreparedData(folder, splits, saved)
            # Without the summary of the original file, describe what the splits hold.
            everything = pd.concat([part for _, part in splits.items()])
            labelled = everything.assign(Label=everything["Label"].map(dict(enumerate(splits.labels))))
            return PreparedData(folder, splits, summarize(str(folder), labelled, splits))
        raise DataError(f"{folder} is a folder without train.csv: give a folder made by `python -m engine data`, a zip or a TSV")
    if source is None or is_url(source):
        zip_path, origin = fetch_zip(cache, [source] if source else (urls or SOURCES), on_progress)
        messages = read_source_file(zip_path)
    else:
        origin = source
        messages = read_source_file(Path(source))
    kept = drop_duplicates(messages) if deduplicate else messages
    labels = label_names(messages)
    splits = split(balance(kept, seed, labels), seed=seed, labels=labels)
    summary = summarize(origin, messages, splits, deduplicated=deduplicate)
    save_splits(splits, cache)
    write_text_atomic(cache / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")
    return PreparedData(cache, splits, summary)


def load_summary(folder: Path) -> DataSummary | None:
    """The summary `prepare` saved beside the splits (counts of the whole original file), if readable."""
    try:
        data = json.loads((Path(folder) / SUMMARY_FILE).read_text(encoding="utf-8"))
        data["token_lengths"] = {name: LengthStats(**stats) for name, stats in data["token_lengths"].items()}
        data["labels"] = tuple(data.get("labels", LABELS))
        return DataSummary(**data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing or from another version: the caller recomputes what it can

