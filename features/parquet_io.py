"""Reading and writing the Parquet tables of a work folder, with errors that name the table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MISSING_HINT = "generate or ingest the CRM data and run One ID first"


def read_parquet(path: Path, what: str, columns: list[str] | None = None,
                 arrow: bool = False, hint: str = MISSING_HINT) -> pd.DataFrame | pa.Table:
    """The table at ``path`` (``what`` names it in errors): a DataFrame, or an Arrow table when
    ``arrow``; ``columns`` are checked to be present and the only ones read."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: {hint}")
    if columns is not None:
        present = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise ValueError(f"{what} ({path}): missing column(s) {missing}")
    table = pq.read_table(path, columns=columns)
    return table if arrow else table.to_pandas()


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
