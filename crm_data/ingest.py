"""Ingest a batch of CRM exports into the stored raw tables, all or nothing.

A batch is a folder of files named after the raw tables (``leads.csv``, ``events.parquet``…).
Raw identifier columns (``phone``, ``wechat_id``, ``email``, ``cookie_id``) found in any file
with a ``lead_id`` are normalised and hashed at the door into ``identities`` rows and dropped;
values that cannot be used are counted by reason, never raised. Columns not in the schema are
dropped (and reported). Every table is validated (CSV timestamps without an offset read as
UTC), ids are checked against the stored tables and lead references against stored + batch
leads; then every touched table is rewritten through temporary files and renames.

Re-ingesting a row that is already stored *identically* is idempotent (skipped and counted);
an id that is already stored with different content refuses the whole batch.

A damaged file refuses the batch too (``crm_data.export_files``): text that is not UTF-8 (or the
encoding given), NUL bytes, a row with fewer or more fields than the header, a quoted field left
open at the end. Every message names the file, the line (or row) and the problem; a cell's value
is never shown, only its shape (``11 digits``), since any cell may hold an identifier.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from crm_data.export_files import DamagedFileError, read_csv_text
from crm_data.validation import MAX_EXAMPLE_ROWS, Problem, ValidationError, check_table
from leadscore.identifiers import email_domain_type, hash_and_mask
from leadscore.schemas import RAW_TABLES, TableSchema

# raw identifier column in an export → identifier type
RAW_IDENTIFIER_COLUMNS: dict[str, str] = {
    "phone": "phone", "wechat_id": "wechat", "email": "email", "cookie_id": "cookie",
}
# tables whose rows point at a lead and must reference a stored or incoming one
LEAD_REFERENCING = ("identities", "events", "outcomes")
# masked display forms (``138****8000``) made at the door beside each hash; never the raw value
MASKS_FILE = "identifier_masks.parquet"
MASK_COLUMNS = ("id_hash", "id_type", "masked")
SUPPORTED_SUFFIXES = (".csv", ".parquet")


@dataclass
class IngestResult:
    """What a batch added: rows per table, skipped duplicates, identifiers hashed/rejected."""

    appended: dict[str, int] = field(default_factory=dict)
    skipped_identical: dict[str, int] = field(default_factory=dict)
    identifiers_hashed: int = 0
    identifiers_rejected: dict[str, int] = field(default_factory=dict)
    dropped_columns: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder/name`` (one writer of a folder at a time)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_parquet_atomically(frames: Mapping[Path, pd.DataFrame]) -> None:
    """Write several Parquet files so that a failure leaves every old file untouched.

    All frames are written to temporary files beside their targets first; only when all
    writes succeeded are they renamed over the targets (``os.replace``, atomic per file).
    """
    temps: dict[Path, Path] = {}
    try:
        for target, frame in frames.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            temps[target] = temp
            frame.to_parquet(temp, index=False)
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        for temp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        raise
    for target, temp in temps.items():
        os.replace(temp, target)


def read_export(path: Path, encoding: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One export file as a frame and a label per row naming where it is in the file
    (``leads.csv line 7``, ``events.parquet row 3``).

    CSV files are decoded strictly (UTF-8 unless ``encoding`` is given) and refused when damaged
    (``crm_data.export_files``: undecodable text, NUL bytes, rows cut short); every cell is read
    as text, empty cells as nulls (types are checked by validation).
    """
    if path.suffix == ".csv":
        checked = read_csv_text(path, encoding)
        frame = pd.read_csv(io.StringIO(checked.text), dtype=str, keep_default_na=False,
                            na_values=[""])
        labels = [f"{path.name} {label}" for label in checked.line_labels()]
        if len(labels) != len(frame):  # pragma: no cover - the scan and pandas agree on rows
            labels = [f"{path.name} row {i + 1}" for i in range(len(frame))]
        return frame, labels
    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        raise DamagedFileError(f"{path}: not a readable Parquet file "
                               f"({type(exc).__name__})") from None
    return frame, [f"{path.name} row {i + 1}" for i in range(len(frame))]


def find_batch_files(source_dir: Path) -> dict[str, Path]:
    """Map table name → export file in ``source_dir``; unknown or doubled files are errors."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"batch folder {source_dir} does not exist")
    found: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(source_dir.iterdir()):
        if path.suffix not in SUPPORTED_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem not in RAW_TABLES:
            problems.append(f"file {path.name} is not named after a raw table "
                            f"({', '.join(RAW_TABLES)})")
        elif path.stem in found:
            problems.append(f"table '{path.stem}' given twice ({found[path.stem].name}, "
                            f"{path.name})")
        else:
            found[path.stem] = path
    if problems:
        raise ValueError("batch refused: " + "; ".join(problems))
    if not found:
        raise ValueError(f"batch folder {source_dir} holds no table files "
                         f"(<table>.csv or <table>.parquet for {', '.join(RAW_TABLES)})")
    return found


def hash_raw_identifier_columns(
    table: str, frame: pd.DataFrame, salt: str, rejected: Counter,
    masks: dict[str, tuple[str, str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn raw identifier columns of ``frame`` into identities rows and drop them.

    Fills ``email_domain_type`` / ``phone_valid`` of a leads export when they are missing.
    Empty cells mean "not given"; unusable values are counted in ``rejected`` by
    ``<type>:<reason>``. Returns the frame without raw columns and the identities rows, whose
    index is the position of the row of ``frame`` each came from. ``masks`` (when given)
    collects ``id_hash → (id_type, masked form)`` (``leadscore.identifiers.mask_value``).
    """
    raw_columns = [c for c in RAW_IDENTIFIER_COLUMNS if c in frame.columns]
    if not raw_columns:
        return frame, pd.DataFrame(columns=["lead_id", "id_type", "id_hash"])
    if "lead_id" not in frame.columns:
        raise ValidationError([Problem(table, "lead_id", "missing required column (needed to "
                                       "attach the raw identifier columns "
                                       f"{', '.join(raw_columns)})")])
    frame = frame.copy()
    rows: list[tuple[str, str, str]] = []
    positions: list[int] = []
    for column in raw_columns:
        id_type = RAW_IDENTIFIER_COLUMNS[column]
        hashed: list[bool] = []
        for position, (lead_id, raw) in enumerate(
                zip(frame["lead_id"], frame[column], strict=True)):
            if raw is None or (isinstance(raw, float) and np.isnan(raw)) or raw == "":
                hashed.append(False)
                continue
            id_hash, masked, reason = hash_and_mask(id_type, raw, salt)
            if id_hash is None:
                rejected[f"{id_type}:{reason}"] += 1
                hashed.append(False)
            else:
                rows.append((lead_id, id_type, id_hash))
                if masks is not None:
                    masks[id_hash] = (id_type, masked)
                positions.append(position)
                hashed.append(True)
        if table == "leads" and column == "phone" and "phone_valid" not in frame.columns:
            frame["phone_valid"] = hashed
        if table == "leads" and column == "email" and "email_domain_type" not in frame.columns:
            frame["email_domain_type"] = [
                email_domain_type(v if isinstance(v, str) else None) for v in frame["email"]
            ]
    identities = pd.DataFrame(rows, columns=["lead_id", "id_type", "id_hash"],
                              index=pd.Index(positions, dtype=np.int64))
    return frame.drop(columns=raw_columns), identities


def _key_columns(schema: TableSchema) -> list[str]:
    unique = [c.name for c in schema.columns if c.unique]
    return unique or schema.column_names


def _same_rows(left: pd.DataFrame, right: pd.DataFrame, columns: list[str]) -> np.ndarray:
    equal = np.ones(len(left), dtype=bool)
    for column in columns:
        a, b = left[column].reset_index(drop=True), right[column].reset_index(drop=True)
        both_null = (a.isna() & b.isna()).to_numpy(dtype=bool)
        same = (a == b).fillna(False).to_numpy(dtype=bool)
        equal &= same | both_null
    return equal


def _split_against_stored(
    name: str, batch: pd.DataFrame, stored: pd.DataFrame, problems: list[Problem],
    labels: list[str],
) -> tuple[pd.DataFrame, int, list[str]]:
    """Rows of ``batch`` not stored yet (and their labels); identical re-sent rows are skipped,
    clashes refused (named by ``labels``, the place of each batch row in its file)."""
    schema = RAW_TABLES[name]
    keys = _key_columns(schema)
    if schema.column_names != keys:  # a unique id column: compare the full rows
        key = keys[0]
        stored_by_key = stored.set_index(key, drop=False)
        seen = batch[key].isin(stored_by_key.index).to_numpy()
        if seen.any():
            old = stored_by_key.loc[batch.loc[seen, key]]
            identical = _same_rows(batch[seen], old, schema.column_names)
            clashing = np.flatnonzero(seen)[~identical]
            if len(clashing):
                examples = tuple(labels[i] for i in clashing[:MAX_EXAMPLE_ROWS])
                problems.append(Problem(name, key, "ids already stored with different content",
                                        len(clashing), examples))
        kept = np.flatnonzero(~seen)
        return batch[~seen], int(seen.sum()), [labels[i] for i in kept]
    merged = batch.merge(stored[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    fresh = (merged["_merge"] == "left_only").to_numpy()
    first = ~batch[keys].duplicated().to_numpy()
    kept = np.flatnonzero(fresh & first)
    return batch.iloc[kept], int(len(batch) - len(kept)), [labels[i] for i in kept]


def _empty_table(schema: TableSchema) -> pd.DataFrame:
    frame, _ = check_table(pd.DataFrame({c: pd.Series([], dtype=object)
                                         for c in schema.column_names}), schema)
    return frame


def ingest_batch(source_dir: Path, raw_dir: Path, salt: str,
                 now: datetime | None = None, encoding: str | None = None) -> IngestResult:
    """Validate the exports in ``source_dir`` and append them to the tables in ``raw_dir``.

    CSV files are read as UTF-8 unless ``encoding`` (a Python codec name, e.g. ``gbk``) is
    given. Raises ``ValidationError`` (listing every problem of every table, rows named by file
    and line, values never shown), ``DamagedFileError`` for a file that is not readable text
    or was cut short, or ``ValueError`` / ``FileNotFoundError`` for a malformed batch; in every
    such case nothing stored changes.
    """
    raw_dir = Path(raw_dir)
    files = find_batch_files(source_dir)
    with exclusive_lock(raw_dir, ".ingest.lock"):
        return _ingest_locked(files, raw_dir, salt, now, encoding)


def _ingest_locked(files: dict[str, Path], raw_dir: Path, salt: str,
                   now: datetime | None, encoding: str | None) -> IngestResult:
    result = IngestResult()
    rejected: Counter = Counter()
    problems: list[Problem] = []
    batch: dict[str, pd.DataFrame] = {}
    labels: dict[str, list[str]] = {}  # where each batch row is: "leads.csv line 7"
    door_identities: list[pd.DataFrame] = []
    door_labels: list[str] = []
    csv_tables: set[str] = set()
    masks: dict[str, tuple[str, str]] = {}

    for name, path in files.items():
        frame, labels[name] = read_export(path, encoding)
        if path.suffix == ".csv":
            csv_tables.add(name)
        frame, identities = hash_raw_identifier_columns(name, frame, salt, rejected, masks)
        door_identities.append(identities)
        door_labels.extend(labels[name][i] for i in identities.index)
        extra = [c for c in frame.columns if c not in RAW_TABLES[name].column_names]
        if extra:
            result.dropped_columns[name] = extra
            frame = frame.drop(columns=extra)
        batch[name] = frame
    hashed = pd.concat([f for f in door_identities if len(f)] or [door_identities[0]],
                       ignore_index=True)
    result.identifiers_hashed = len(hashed)
    result.identifiers_rejected = dict(sorted(rejected.items()))
    if len(hashed):
        batch["identities"] = pd.concat(
            [batch["identities"], hashed], ignore_index=True
        ) if "identities" in batch else hashed
        labels["identities"] = labels.get("identities", []) + door_labels

    conformed: dict[str, pd.DataFrame] = {}
    for name, frame in batch.items():
        table, found = check_table(frame, RAW_TABLES[name], now, assume_utc=name in csv_tables,
                                   row_labels=labels[name])
        conformed[name] = table
        problems.extend(found)
    if problems:
        raise ValidationError(problems)

    stored: dict[str, pd.DataFrame] = {}
    for name in RAW_TABLES:
        path = raw_dir / f"{name}.parquet"
        if path.is_file():
            table, found = check_table(pd.read_parquet(path), RAW_TABLES[name], now,
                                       row_labels=None, label_prefix=f"{path.name} ")
            problems.extend(Problem(p.table, p.column, "stored table: " + p.problem, p.n_rows,
                                    p.examples) for p in found)
            stored[name] = table
        else:
            stored[name] = _empty_table(RAW_TABLES[name])
    if problems:
        raise ValidationError(problems)

    fresh: dict[str, pd.DataFrame] = {}
    fresh_labels: dict[str, list[str]] = {}
    for name, table in conformed.items():
        fresh[name], result.skipped_identical[name], fresh_labels[name] = _split_against_stored(
            name, table, stored[name], problems, labels[name])
    known_leads = pd.Index(stored["leads"]["lead_id"]).append(
        pd.Index(fresh.get("leads", stored["leads"].iloc[:0])["lead_id"]))
    for name in LEAD_REFERENCING:
        if name in fresh:
            unknown = ~fresh[name]["lead_id"].isin(known_leads).to_numpy()
            if unknown.any():
                examples = tuple(fresh_labels[name][i]
                                 for i in np.flatnonzero(unknown)[:MAX_EXAMPLE_ROWS])
                problems.append(Problem(name, "lead_id", "refers to leads that are neither "
                                        "stored nor in this batch", int(unknown.sum()),
                                        examples))
    if problems:
        raise ValidationError(problems)

    targets: dict[Path, pd.DataFrame] = {}
    for name in RAW_TABLES:
        path = raw_dir / f"{name}.parquet"
        if name in fresh and len(fresh[name]):
            parts = [stored[name], fresh[name]] if len(stored[name]) else [fresh[name]]
            targets[path] = pd.concat(parts, ignore_index=True)
        elif not path.is_file():
            targets[path] = stored[name]
        result.appended[name] = len(fresh[name]) if name in fresh else 0
    if masks:
        targets[raw_dir / MASKS_FILE] = _merged_masks(raw_dir / MASKS_FILE, masks)
    write_parquet_atomically(targets)
    return result


def _merged_masks(path: Path, masks: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """The stored masks table (``id_hash, id_type, masked``) with this batch's added."""
    fresh = pd.DataFrame([(h, t, m) for h, (t, m) in masks.items()], columns=list(MASK_COLUMNS))
    if path.is_file():
        fresh = pd.concat([pd.read_parquet(path, columns=list(MASK_COLUMNS)), fresh],
                          ignore_index=True)
    return fresh.drop_duplicates("id_hash", keep="first").reset_index(drop=True)
