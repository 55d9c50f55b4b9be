"""The SMS Spam Collection: fetch or read it, balance, split, save, describe; prepared folders reused or prepared again."""

import io
import json
import statistics
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engine import strict_json
from engine.atomic import write_bytes_atomic, write_text_atomic
from engine.config import DATA_CACHE, DEFAULT_SEED, LABELS, Parse
from engine.data.download import ProgressCallback, download_first_valid
from engine.data.quality import deduplicate as drop_duplicates
from engine.data.quality import duplicate_report
from engine.data.reading import READING_WORDS, Reading, decode_utf8, parse_source, starts_with_header
from engine.errors import DataError
from engine.tokenizer import encode

PRIMARY_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip"
SOURCES: tuple[str, ...] = (PRIMARY_URL, BACKUP_URL)
MEMBER = "SMSSpamCollection"
ZIP_NAME = "sms_spam_collection.zip"
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
SUMMARY_FILE = "summary.json"
ORIGINAL_DIR = "original"  # a copy of a local source file, so that it can be prepared again another way
MAX_SOURCE_BYTES = 50 * 1024 * 1024  # the real file is 0.5 MB; anything far larger is not it
MAX_UNPACKED_BYTES = MAX_SOURCE_BYTES  # a zipped message file is held to the same size once inflated
UNPACK_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Splits:
    """Three frames with columns Label (the class index: 0 ham, 1 spam for the SMS data) and Text."""

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
    balanced: int
    train: int
    validation: int
    test: int
    longest_train_tokens: int
    token_lengths: dict[str, LengthStats]  # per split
    deduplicated: bool = False  # repeated (label, text) pairs were dropped before balancing
    labels: tuple[str, ...] = LABELS  # class names, in class-index order
    class_counts: dict[str, int] = field(default_factory=dict)  # messages per class in the parsed file
    class_fractions: dict[str, dict[str, float]] = field(default_factory=dict)  # per split: each class's share of its messages
    duplicates: dict[str, Any] = field(default_factory=dict)  # DuplicateReport of the parsed file
    parse: Reading = "faithful"  # how the file was read (engine.data.reading); older summaries: always faithfully
    original: str | None = None  # the file the splits came from, relative to their folder or absolute

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreparedData:
    folder: Path
    splits: Splits
    summary: DataSummary


def label_names(messages: pd.DataFrame) -> tuple[str, ...]:
    """The class names: ham, spam for the SMS data (the book's 0 and 1), else the labels sorted."""
    found = set(messages["Label"])
    return LABELS if found <= set(LABELS) else tuple(sorted(found))


def read_source_file(path: Path, parse: Parse = "faithful") -> pd.DataFrame:
    """Parse a local zip (UCI layout), the SMS tab-separated file, or a headered CSV/TSV of your own."""
    return parse_source(source_bytes(path), path.name, parse)


def source_bytes(path: Path) -> bytes:
    """The message file's bytes: the file itself, or the SMSSpamCollection inside a zip."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: give the SMS Spam Collection zip or its tab-separated file")
    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise DataError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_SOURCE_BYTES:,}-byte limit for a message file")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04" or path.suffix.lower() == ".zip":
        raw = _zip_member(raw, path.name)
    elif raw.lstrip()[:1] == b"<":
        raise DataError(f"{path.name} is an HTML page, not the dataset: download the zip again or use its tab-separated file")
    return raw


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


def balance(messages: pd.DataFrame, seed: int = DEFAULT_SEED, labels: tuple[str, ...] | None = None) -> pd.DataFrame:
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


def split(frame: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = DEFAULT_SEED, labels: tuple[str, ...] = LABELS) -> Splits:
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


def summarize(
    source: str, messages: pd.DataFrame, splits: Splits, deduplicated: bool = False, parse: Reading = "faithful", original: str | None = None
) -> DataSummary:
    lengths = {name: token_length_stats(part["Text"].tolist()) for name, part in splits.items()}
    counts = messages["Label"].value_counts()
    return DataSummary(
        source=source,
        messages=len(messages),
        balanced=sum(len(part) for _, part in splits.items()),
        train=len(splits.train),
        validation=len(splits.validation),
        test=len(splits.test),
        longest_train_tokens=lengths["train"].max,
        token_lengths=lengths,
        deduplicated=deduplicated,
        labels=splits.labels,
        class_counts={name: int(counts.get(name, 0)) for name in splits.labels},
        class_fractions={
            split_name: {name: round(float((part["Label"] == index).mean()), 4) for index, name in enumerate(splits.labels)}
            for split_name, part in splits.items()
        },
        duplicates=duplicate_report(messages, splits).to_dict(),
        parse=parse,
        original=original,
    )


def save_splits(splits: Splits, folder: Path) -> None:
    """Write train.csv, validation.csv, test.csv (Label, Text), as the book does."""
    for name, part in splits.items():
        write_text_atomic(folder / f"{name}.csv", part.to_csv(index=False))


def load_splits(folder: Path, labels: tuple[str, ...] = LABELS) -> Splits:
    """Read the three CSVs written by `save_splits`; `labels` names the class indices."""
    return Splits(*(read_split(folder, name, len(labels)) for name in SPLIT_NAMES), labels)


def read_split(folder: Path, name: str, n_classes: int = len(LABELS)) -> pd.DataFrame:
    """One split's CSV as `save_splits` wrote it: columns Label (0 to n_classes - 1) and Text.

    Raises:
        DataError: the file is missing or is not such a CSV.
    """
    path = Path(folder) / f"{name}.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: run `python -m engine data --cache {folder}` first")
    try:
        frame = pd.read_csv(path, dtype={"Label": int, "Text": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path} is not a Label,Text CSV ({error}): prepare the data again") from None
    if list(frame.columns) != ["Label", "Text"] or not frame["Label"].isin(range(n_classes)).all():
        raise DataError(f"{path} must have columns Label (0 to {n_classes - 1}) and Text: prepare the data again")
    return frame


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


def prepare_fetched(fetched: tuple[Path, str], cache: Path, seed: int = DEFAULT_SEED, deduplicate: bool = False) -> PreparedData:
    """Balance, split and save into `cache` the zip `fetch_zip` returned ((path, where it came from)), read faithfully:
    `prepare(None, ...)` in two steps, so that the download can run apart from the writing."""
    zip_path, origin = fetched
    return _prepare_file(zip_path, origin, Path(cache), seed, deduplicate, "faithful", ZIP_NAME)


def is_prepared_folder(source: str | None) -> bool:
    return source is not None and not is_url(source) and Path(source).is_dir()


def prepare(
    source: str | None = None,
    cache: Path | str = DATA_CACHE,
    on_progress: ProgressCallback | None = None,
    seed: int = DEFAULT_SEED,
    urls: Sequence[str] | None = None,
    deduplicate: bool = False,
    parse: Parse | None = None,
) -> PreparedData:
    """Get the data from `source` (None: `urls`, default the UCI URL then its backup; a URL; a local zip/TSV; a prepared folder),
    then balance, split and save the splits into `cache`. `parse` says how the SMS file's lines are
    read (None: faithfully). With `deduplicate`, repeated (label, text) pairs are dropped first, so
    no text can sit in two splits.

    A prepared folder is used as it is, unless it was prepared otherwise than asked (read with
    another `parse`, or not de-duplicated when `deduplicate` is asked): then the file it came from
    is prepared again, into `cache`. `parse=None` and `deduplicate=False` ask nothing of a folder.

    Raises:
        DataError: the source is unreadable or holds the wrong content, or a prepared folder cannot
            be prepared as asked (its original file is gone, or it holds splits only).
        DownloadError: no URL could be downloaded.
    """
    cache = Path(cache)
    if is_prepared_folder(source):
        return _from_folder(Path(str(source)), cache, seed, deduplicate, parse)
    if source is None or is_url(source):
        zip_path, origin = fetch_zip(cache, [source] if source else (urls or SOURCES), on_progress)
        return _prepare_file(zip_path, origin, cache, seed, deduplicate, parse or "faithful", ZIP_NAME)
    path = Path(source)
    return _prepare_file(path, source, cache, seed, deduplicate, parse or "faithful", f"{ORIGINAL_DIR}/{path.name}", keep_copy=True)


def _prepare_file(path: Path, origin: str, cache: Path, seed: int, deduplicate: bool, parse: Parse, original: str, keep_copy: bool = False) -> PreparedData:
    """Read, balance, split and save `path`; `original` is where the summary says it lies (kept in `cache` with `keep_copy`)."""
    raw = source_bytes(path)
    messages = parse_source(raw, path.name, parse)
    reading: Reading = "table" if starts_with_header(decode_utf8(raw, path.name)) else parse
    kept = drop_duplicates(messages) if deduplicate else messages
    labels = label_names(messages)
    splits = split(balance(kept, seed, labels), seed=seed, labels=labels)
    summary = summarize(origin, messages, splits, deduplicated=deduplicate, parse=reading, original=original)
    copy = cache / original
    keep_copy = keep_copy and not (copy.is_file() and copy.samefile(path))
    if keep_copy:
        write_bytes_atomic(copy, path.read_bytes())
    save_splits(splits, cache)
    write_text_atomic(cache / SUMMARY_FILE, strict_json.dumps(summary.to_dict(), indent=2) + "\n")
    if keep_copy:
        for earlier in (cache / ORIGINAL_DIR).iterdir():
            if earlier != copy:
                earlier.unlink()  # one original at a time: the one the summary names
    return PreparedData(cache, splits, summary)


def _from_folder(folder: Path, cache: Path, seed: int, deduplicate: bool, parse: Parse | None) -> PreparedData:
    """A prepared folder as it is, or its original file prepared again as asked (see `prepare`)."""
    if not (folder / "train.csv").is_file():
        raise DataError(f"{folder} is a folder without train.csv: give a folder made by `python -m engine data`, a zip or a TSV")
    saved = load_summary(folder)
    splits = load_splits(folder, saved.labels if saved else LABELS)
    if saved is None or (saved.train, saved.validation, saved.test) != tuple(len(p) for _, p in splits.items()):
        if deduplicate:
            raise DataError(
                f"{folder} holds splits without the summary of the file they came from, so they cannot be de-duplicated "
                "before splitting: give that file (zip, TSV or CSV) instead, or train without de-duplication"
            )
        # Splits alone: described by what they hold, and used as they are whatever the parse.
        everything = pd.concat([part for _, part in splits.items()])
        labelled = everything.assign(Label=everything["Label"].map(dict(enumerate(splits.labels))))
        return PreparedData(folder, splits, summarize(str(folder), labelled, splits, parse="given"))
    same_reading = parse is None or saved.parse in (parse, "table")
    if same_reading and (saved.deduplicated or not deduplicate):
        return PreparedData(folder, splits, saved)
    wanted: Parse = parse or ("book" if saved.parse == "book" else "faithful")
    original = _original_file(folder, saved, wanted, deduplicate)
    return _prepare_file(original, saved.source, cache, seed, deduplicate or saved.deduplicated, wanted, str(original.resolve()))


def _original_file(folder: Path, saved: DataSummary, parse: Parse, deduplicate: bool) -> Path:
    """The file a prepared folder came from; older versions kept no copy, so also its download or its path."""
    candidates = [folder / saved.original] if saved.original else []
    candidates.append(folder / ZIP_NAME if is_url(saved.source) else Path(saved.source))
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        asked = f"read {READING_WORDS[parse]}" + (", de-duplicated" if deduplicate and not saved.deduplicated else "")
        raise DataError(
            f"the data in {folder} was read {READING_WORDS.get(saved.parse, saved.parse)}{', de-duplicated' if saved.deduplicated else ''}; "
            f"this run needs it {asked}, but the file it came from ({saved.source}) is gone: download or upload the data again "
            "(or `python -m engine data --source FILE`)"
        )
    return found


def load_summary(folder: Path) -> DataSummary | None:
    """The summary `prepare` saved beside the splits (counts of the whole original file), if readable.

    Summaries of older versions are read too: they counted "ham" and "spam" in fields of their own
    and kept the spam share of each split, where a summary now counts every class by name.
    """
    try:
        data = json.loads((Path(folder) / SUMMARY_FILE).read_text(encoding="utf-8"))
        data["token_lengths"] = {name: LengthStats(**stats) for name, stats in data["token_lengths"].items()}
        data["labels"] = tuple(data.get("labels", LABELS))
        ham, spam = data.pop("ham", None), data.pop("spam", None)
        data.pop("spam_fraction", None)
        if not data.get("class_counts") and ham is not None and spam is not None:
            data["class_counts"] = {"ham": int(ham), "spam": int(spam)}
        return DataSummary(**data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing or from another version: the caller recomputes what it can
