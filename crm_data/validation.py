"""Validate raw CRM tables against their declared schemas (``leadscore.schemas``).

``validate_table`` checks one table and raises one ``ValidationError`` listing every problem
found (missing columns, un-coercible types, nulls, values outside the vocabulary, duplicate ids,
naive or future timestamps, identifier columns that are not salted hashes). Offending rows are
named by place (``row 7``, or the label the caller gives, e.g. ``leads.csv line 9``), and a value
only by its shape (``11 digits``): a cell may hold an identifier, so no value is ever echoed.
``conform_table``
runs the same checks and returns the table with canonical dtypes (timestamps as
``datetime64[us, UTC]``). ``load_raw_tables`` reads and validates the stored Parquet tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.identifiers import ID_TYPES
from leadscore.schemas import RAW_TABLES, Column, TableSchema

CLOCK_SKEW = timedelta(minutes=5)
MAX_EXAMPLE_ROWS = 5
# A salted identifier hash as written by ``leadscore.identifiers.hash_value``.
ID_HASH_PATTERN = r"(?:" + "|".join(ID_TYPES) + r"):[0-9a-f]{32}"
HASH_COLUMNS = frozenset({"id_hash"})
TIMESTAMP_DTYPE = "datetime64[us, UTC]"

_TZ_SUFFIX = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
_TRUE_STRINGS = frozenset({"true", "t", "yes", "y", "1"})
_FALSE_STRINGS = frozenset({"false", "f", "no", "n", "0"})


@dataclass(frozen=True)
class Problem:
    """One problem of one column of one table, with a few offending rows."""

    table: str
    column: str
    problem: str
    n_rows: int = 0
    examples: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"column '{self.column}': {self.problem}"
        if self.n_rows:
            text += f" ({self.n_rows} row{'s' if self.n_rows != 1 else ''}"
            if self.examples:
                text += ", e.g. " + ", ".join(self.examples)
            text += ")"
        return text


class ValidationError(ValueError):
    """A raw table breaks its schema; the message lists every problem found."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(problems)
        super().__init__(format_problems(self.problems))

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(p.table for p in self.problems))


def format_problems(problems: list[Problem]) -> str:
    """A readable multi-line message grouping problems by table."""
    lines: list[str] = []
    for table in dict.fromkeys(p.table for p in problems):
        mine = [p for p in problems if p.table == table]
        count = f"{len(mine)} problem{'s' if len(mine) != 1 else ''}"
        lines.append(f"table '{table}' failed validation ({count}):")
        lines.extend(f"  - {p.describe()}" for p in mine)
    return "\n".join(lines)


@dataclass
class _Checker:
    """Checks and converts one table, collecting problems instead of stopping at the first."""

    df: pd.DataFrame
    schema: TableSchema
    now: datetime
    assume_utc: bool
    row_labels: Sequence[str] | None = None
    label_prefix: str = ""
    problems: list[Problem] = field(default_factory=list)

    def row_refs(self, mask: np.ndarray, values: pd.Series | None = None) -> tuple[str, ...]:
        """Name up to ``MAX_EXAMPLE_ROWS`` offending rows by place, with the shape of the
        offending value (never the value: it may be an identifier)."""
        refs = []
        for pos in np.flatnonzero(mask)[:MAX_EXAMPLE_ROWS]:
            ref = (self.row_labels[pos] if self.row_labels is not None
                   else f"{self.label_prefix}row {pos + 1}")
            if values is not None:
                ref += f" ({value_shape(values.iat[pos])})"
            refs.append(ref)
        return tuple(refs)

    def add(self, column: str, problem: str, mask: np.ndarray | None = None,
            values: pd.Series | None = None) -> None:
        if mask is None:
            self.problems.append(Problem(self.schema.name, column, problem))
            return
        n_rows = int(np.count_nonzero(mask))
        if n_rows:
            self.problems.append(
                Problem(self.schema.name, column, problem, n_rows, self.row_refs(mask, values))
            )

    def run(self) -> pd.DataFrame:
        out = self.df.copy(deep=False)
        for column in self.schema.columns:
            if column.name not in self.df.columns:
                if column.required:
                    self.add(column.name, "missing required column")
                    continue
                out[column.name] = pd.Series([None] * len(self.df), index=self.df.index)
            converted = self.check_column(column, out[column.name])
            if converted is not None:
                out[column.name] = converted
        self.check_hash_columns(out)
        ordered = self.schema.column_names + [c for c in out.columns
                                              if c not in self.schema.column_names]
        return out[[c for c in ordered if c in out.columns]]

    # ---- one column --------------------------------------------------------------------------
    def check_column(self, column: Column, series: pd.Series) -> pd.Series | None:
        present = series.notna().to_numpy()
        converter = {
            "string": self.to_string,
            "int": self.to_int,
            "float": self.to_float,
            "bool": self.to_bool,
            "timestamp": self.to_timestamp,
        }.get(column.dtype)
        if converter is None:
            raise ValueError(f"schema '{self.schema.name}' column '{column.name}': "
                             f"unknown dtype {column.dtype!r}")
        if not column.nullable:
            self.add(column.name, "null values in a non-nullable column", ~present)
        if not present.any():
            return _all_null(column.dtype, series.index, column.nullable)
        converted, bad = converter(column, series, present)
        if bad is not None and bad.any():
            self.add(column.name, f"wrong type: values cannot be read as {column.dtype}", bad,
                     values=series)
        if converted is None:
            return None
        usable = present & ~(bad if bad is not None else False)
        if column.allowed is not None:
            outside = usable & ~converted.isin(column.allowed).to_numpy()
            allowed = ", ".join(map(str, column.allowed))
            self.add(column.name, f"values outside the allowed set ({allowed})", outside,
                     values=series)
        if column.unique:
            duplicated = usable & converted.duplicated(keep=False).to_numpy()
            self.add(column.name, "duplicate values in a unique column", duplicated)
        if column.dtype == "timestamp" and column.name in self.schema.not_future:
            limit = pd.Timestamp(self.now) + CLOCK_SKEW
            future = usable & (converted > limit).fillna(False).to_numpy(dtype=bool)
            self.add(column.name, f"timestamps in the future (after {limit.isoformat()})",
                     future)
        return converted

    def to_string(self, column: Column, s: pd.Series, present: np.ndarray):
        if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            return s.astype(object).where(s.notna(), None).map(_int_to_str), None
        if pd.api.types.is_string_dtype(s.dtype) or s.dtype == object:
            if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
                if s.dtype == object:
                    return s, None
                return s.astype(object).where(s.notna(), None), None
            ok = s.map(lambda v: isinstance(v, str | int | np.integer)
                       and not isinstance(v, bool | np.bool_))
            bad = present & ~ok.to_numpy(dtype=bool)
            return s.astype(object).where(s.notna(), None).map(_int_to_str), bad
        return s.astype(object).where(s.notna(), None), present

    def to_int(self, column: Column, s: pd.Series, present: np.ndarray):
        if pd.api.types.is_bool_dtype(s.dtype):
            return None, present
        if pd.api.types.is_integer_dtype(s.dtype):
            return s, None
        numeric = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_float_dtype(
            s.dtype) else s
        values = numeric.to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (np.floor(values) == values)
        bad = present & ~integral
        ints = pd.array(np.where(integral, values, 0).astype(np.int64), dtype="Int64")
        ints[~integral] = pd.NA
        result = pd.Series(ints, index=s.index, name=s.name)
        if not column.nullable and not result.isna().any():
            result = result.astype(np.int64)
        return result, bad

    def to_float(self, column: Column, s: pd.Series, present: np.ndarray):
        if pd.api.types.is_bool_dtype(s.dtype):
            return None, present
        if pd.api.types.is_float_dtype(s.dtype) and s.dtype == np.float64:
            return s, None
        numeric = pd.to_numeric(s, errors="coerce").astype(np.float64)
        return numeric, present & numeric.isna().to_numpy()

    def to_bool(self, column: Column, s: pd.Series, present: np.ndarray):
        if pd.api.types.is_bool_dtype(s.dtype):
            return s, None
        if pd.api.types.is_integer_dtype(s.dtype):
            mapped = s.map({0: False, 1: True})
        elif s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            mapped = s.map(_parse_bool)
        else:
            return None, present
        bad = present & mapped.isna().to_numpy()
        if column.nullable or mapped.isna().any():
            return mapped.astype("boolean"), bad
        return mapped.astype(bool), bad

    def to_timestamp(self, column: Column, s: pd.Series, present: np.ndarray):
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            return s.dt.tz_convert("UTC").astype(TIMESTAMP_DTYPE), None
        if pd.api.types.is_datetime64_dtype(s.dtype):
            if not self.assume_utc:
                self.add(column.name, "naive timestamps without a time zone (store UTC)",
                         present)
            return s.dt.tz_localize("UTC").astype(TIMESTAMP_DTYPE), None
        if not (s.dtype == object or pd.api.types.is_string_dtype(s.dtype)):
            return None, present
        texts = s.map(lambda v: v.strip() if isinstance(v, str) else None)
        is_text = texts.notna().to_numpy()
        parsed = pd.to_datetime(texts.where(is_text, None), format="ISO8601", utc=True,
                                errors="coerce")
        naive = is_text & ~texts.map(
            lambda v: bool(v and _TZ_SUFFIX.search(v))).to_numpy(dtype=bool)
        others = present & ~is_text
        bad = is_text & parsed.isna().to_numpy()
        if others.any():  # datetime objects in an object column
            for pos in np.flatnonzero(others):
                value = s.iat[pos]
                if isinstance(value, datetime):
                    stamp = pd.Timestamp(value)
                    naive[pos] = stamp.tzinfo is None
                    if stamp.tzinfo is None:
                        stamp = stamp.tz_localize("UTC")
                    parsed.iat[pos] = stamp.tz_convert("UTC")
                else:
                    bad[pos] = True
        naive &= ~bad
        if not self.assume_utc:
            self.add(column.name, "naive timestamps without a time zone (store UTC)", naive)
        return parsed.astype(TIMESTAMP_DTYPE), bad

    # ---- identifier hashes -------------------------------------------------------------------
    def check_hash_columns(self, df: pd.DataFrame) -> None:
        for name in HASH_COLUMNS & set(df.columns) & set(self.schema.column_names):
            id_type = df["id_type"] if "id_type" in df.columns else None
            check = check_id_hashes(df[name], id_type)
            self.add(name, "not a salted identifier hash '<type>:<32 hex>' (raw identifiers "
                     "must be hashed with leadscore.identifiers before storing)",
                     check.malformed)
            self.add(name, "hash prefix does not match id_type", check.type_mismatch)


@dataclass(frozen=True)
class HashCheck:
    """Row masks of an identifier hash column: missing, malformed, prefix ≠ id_type."""

    missing: np.ndarray
    malformed: np.ndarray
    type_mismatch: np.ndarray


def check_id_hashes(id_hash: pd.Series, id_type: pd.Series | None = None) -> HashCheck:
    """Which values are missing, not ``<type>:<32 hex>``, or of another type than ``id_type``.

    Vectorised with Arrow's regex engine (fast on millions of rows).
    """
    values = id_hash.astype(object).where(id_hash.notna(), None).to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        values = np.array([v if isinstance(v, str) else None for v in values], dtype=object)
    texts = pa.array(values, type=pa.string())
    missing = np.asarray(pc.is_null(texts)) | np.asarray(pc.equal(texts, "").fill_null(False))
    well_formed = np.asarray(
        pc.match_substring_regex(texts, f"^{ID_HASH_PATTERN}$").fill_null(False))
    mismatch = np.zeros(len(values), dtype=bool)
    if id_type is not None:
        types = id_type.astype(object).where(id_type.notna(), None).to_numpy(dtype=object)
        own_prefix = np.zeros(len(values), dtype=bool)
        for name in ID_TYPES:
            of_type = types == name
            if of_type.any():
                starts = np.asarray(pc.starts_with(texts, f"{name}:").fill_null(False))
                own_prefix |= of_type & starts
        mismatch = well_formed & ~own_prefix
    return HashCheck(missing, ~missing & ~well_formed, mismatch)


def _all_null(dtype: str, index: pd.Index, nullable: bool) -> pd.Series:
    """An all-null column of the canonical dtype for ``dtype`` (plain dtypes when empty)."""
    if len(index) == 0 and not nullable and dtype in ("int", "bool"):
        return pd.Series([], index=index, dtype=np.int64 if dtype == "int" else bool)
    canonical = {"string": object, "int": "Int64", "float": np.float64, "bool": "boolean",
                 "timestamp": TIMESTAMP_DTYPE}[dtype]
    return pd.Series(pd.NA if dtype in ("int", "bool") else None, index=index, dtype=canonical)


def value_shape(value: object) -> str:
    """What a value looks like without showing it: ``11 digits``, ``text of 9 characters``."""
    if _is_null(value):
        return "empty"
    if isinstance(value, bool | np.bool_):
        return "a true/false value"
    if isinstance(value, int | float | np.number):
        return "a number"
    if isinstance(value, datetime | pd.Timestamp):
        return "a timestamp"
    text = str(value).strip()
    if not text:
        return "blank text"
    digits = sum(ch.isdigit() for ch in text)
    if digits == len(text):
        return f"{digits} digit{'s' if digits != 1 else ''}"
    shape = f"text of {len(text)} character{'s' if len(text) != 1 else ''}"
    return shape + (f", {digits} of them digits" if digits else "")


def _is_null(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _int_to_str(value: object) -> object:
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    return value


def _parse_bool(value: object) -> bool | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_STRINGS:
            return True
        if text in _FALSE_STRINGS:
            return False
    return None


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("'now' must be timezone-aware (UTC)")
    return now


def check_table(df: pd.DataFrame, schema: TableSchema, now: datetime | None = None,
                assume_utc: bool = False, row_labels: Sequence[str] | None = None,
                label_prefix: str = "") -> tuple[pd.DataFrame, list[Problem]]:
    """Check ``df`` against ``schema``: the conformed frame and the problems found.

    Offending rows are named by ``row_labels`` (one per row, e.g. ``leads.csv line 9``) when
    given, else ``<label_prefix>row <n>`` (1-based).
    """
    if row_labels is not None and len(row_labels) != len(df):
        raise ValueError(f"{len(row_labels)} row labels for {len(df)} rows")
    checker = _Checker(df, schema, _now(now), assume_utc, row_labels, label_prefix)
    conformed = checker.run()
    return conformed, checker.problems


def validate_table(df: pd.DataFrame, schema: TableSchema, now: datetime | None = None) -> None:
    """Raise ``ValidationError`` listing every way ``df`` breaks ``schema``.

    Timestamps must be timezone-aware and not later than ``now`` + 5 minutes (clock skew).
    """
    _, problems = check_table(df, schema, now)
    if problems:
        raise ValidationError(problems)


def conform_table(df: pd.DataFrame, schema: TableSchema, now: datetime | None = None,
                  assume_utc: bool = False) -> pd.DataFrame:
    """Validate ``df`` and return it with canonical dtypes (UTC timestamps, ints, bools).

    ``assume_utc`` reads naive timestamps (e.g. from CSV exports) as UTC instead of refusing.
    """
    conformed, problems = check_table(df, schema, now, assume_utc)
    if problems:
        raise ValidationError(problems)
    return conformed


def load_raw_tables(raw_dir: Path, tables: Iterable[str] | None = None,
                    now: datetime | None = None) -> dict[str, pd.DataFrame]:
    """Read the raw Parquet tables from ``raw_dir``, validated and conformed.

    ``tables`` picks a subset of ``leads, identities, events, orders, outcomes`` (default all).
    Raises ``FileNotFoundError`` naming a missing file, ``ValidationError`` for bad content.
    """
    names = list(RAW_TABLES) if tables is None else list(tables)
    unknown = [n for n in names if n not in RAW_TABLES]
    if unknown:
        raise ValueError(f"unknown raw table(s) {unknown}; known: {list(RAW_TABLES)}")
    raw_dir = Path(raw_dir)
    missing = [n for n in names if not (raw_dir / f"{n}.parquet").is_file()]
    if missing:
        files = ", ".join(f"{n}.parquet" for n in missing)
        raise FileNotFoundError(
            f"raw table file(s) missing in {raw_dir}: {files} "
            "(create them with `leadscore generate` or `leadscore ingest`)"
        )
    loaded: dict[str, pd.DataFrame] = {}
    problems: list[Problem] = []
    for name in names:
        frame, found = check_table(pd.read_parquet(raw_dir / f"{name}.parquet"),
                                   RAW_TABLES[name], now, label_prefix=f"{name}.parquet ")
        loaded[name] = frame
        problems.extend(found)
    if problems:
        raise ValidationError(problems)
    return loaded
