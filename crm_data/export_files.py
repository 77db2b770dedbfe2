"""Refuse damaged CSV exports before they are parsed: text that is not in the file's encoding,
NUL bytes, a row cut short (fewer fields than the header, an unclosed quote at the end, a last
row without its line end — a cut inside the last field leaves nothing else to see).

``read_csv_text`` decodes a file strictly (UTF-8, with or without BOM, unless an encoding is
given; never a silent fallback) and walks its records once with the ``csv`` module, so every
problem is named by file, line and kind — never by a cell's value. It returns the decoded text
and the line each data record starts on, for messages that point into the file.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENCODING = "utf-8-sig"
MAX_LISTED_LINES = 5
# encodings tried (strictly) only to suggest one in a message, never to read the file
_SUGGESTIONS = ("gbk", "gb18030", "big5", "shift_jis", "cp1252")


class DamagedFileError(ValueError):
    """A file that cannot be read as it is; the message names the file, line and problem."""


@dataclass(frozen=True)
class CsvText:
    """A decoded, structurally sound CSV file: its text and where each data record starts."""

    path: Path
    text: str
    encoding: str
    header: list[str]
    record_lines: list[int]  # 1-based line on which each data record starts

    def line_labels(self) -> list[str]:
        return [f"line {n}" for n in self.record_lines]


def check_encoding_name(encoding: str | None, path: Path | None = None) -> str:
    """The codec name to read with (``DEFAULT_ENCODING`` for None); unknown names refused."""
    if encoding is None:
        return DEFAULT_ENCODING
    try:
        codecs.lookup(encoding)
    except LookupError:
        where = f"{path}: " if path is not None else ""
        raise DamagedFileError(
            f"{where}unknown encoding {encoding!r} (--encoding): give a Python codec name such "
            "as utf-8, gbk, gb18030, big5 or cp1252") from None
    return encoding


def _suggest_encoding(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "it starts with a UTF-16 byte order mark: try --encoding utf-16"
    for name in _SUGGESTIONS:
        try:
            data.decode(name)
        except UnicodeDecodeError:
            continue
        return f"it reads as {name.upper()} text: try --encoding {name}"
    return "give the file's encoding with --encoding (e.g. --encoding gbk or cp1252)"


def decode_export(path: Path, data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """``(text, encoding)`` of ``data`` decoded strictly; ``DamagedFileError`` names the line
    and byte offset of the first undecodable byte, and suggests ``--encoding``."""
    name = check_encoding_name(encoding, path)
    try:
        text = data.decode(name)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = f"{path}: line {line} (byte offset {exc.start})"
        shown = "UTF-8" if name == DEFAULT_ENCODING else name
        if exc.reason == "unexpected end of data" and exc.end >= len(data):
            raise DamagedFileError(
                f"{where}: the file ends inside a {shown} character — it looks cut short; "
                "re-export it") from None
        hint = (_suggest_encoding(data) if encoding is None
                else "check the encoding given with --encoding")
        raise DamagedFileError(f"{where}: not valid {shown} text; {hint}") from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        count = text.count("\x00")
        hint = ""
        if count * 4 >= len(text) and encoding is None:
            hint = "; it looks like UTF-16 text: try --encoding utf-16"
        raise DamagedFileError(
            f"{path}: line {line}: {count} NUL byte{'s' if count != 1 else ''} — binary data "
            f"or a damaged file, not a CSV export{hint}")
    return text, name


def _fields_problem(line: int, n_fields: int, n_header: int, last: bool,
                    ends_in_newline: bool) -> str:
    if n_fields > n_header:
        return f"line {line}: {n_fields} fields where the header has {n_header}"
    cut = " and no line end: the file looks cut short" if last and not ends_in_newline else (
        " (a row cut short or a missing delimiter)")
    plural = "s" if n_fields != 1 else ""
    return f"line {line}: {n_fields} field{plural} where the header has {n_header}{cut}"


def scan_csv(path: Path, text: str, delimiter: str = ",", skipinitialspace: bool = False,
             require_final_newline: bool = True) -> tuple[list[str], list[int]]:
    """``(header, record start lines)`` of ``text``; ``DamagedFileError`` for rows whose field
    count differs from the header's, broken quoting, a quoted field left open at the end and
    (with ``require_final_newline``) a last data row without its line end."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        skipinitialspace=skipinitialspace, strict=True)
    header: list[str] | None = None
    starts: list[int] = []
    bad: list[tuple[int, int]] = []
    n_bad = 0
    previous_end = 0
    ends_in_newline = text.endswith(("\n", "\r"))
    rows = iter(reader)
    while True:
        start = previous_end + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                problem = (f"line {start}: a quoted field opened here is not closed before the "
                           "end of the file — it looks cut short")
            else:
                problem = f"line {reader.line_num}: broken quoting ({exc})"
            raise DamagedFileError(f"{path}: {problem}") from None
        previous_end = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            n_bad += 1
            if len(bad) < MAX_LISTED_LINES:
                bad.append((start, len(row)))
        starts.append(start)
    if header is None:
        raise DamagedFileError(f"{path}: no header row (the file holds no text)")
    if require_final_newline and starts and not ends_in_newline and not n_bad:
        # a cut inside the last field leaves a row with every field: only the missing line end
        # tells it from a complete file
        raise DamagedFileError(
            f"{path}: line {starts[-1]}: the last row has no line end — the file looks cut "
            "short (re-export it; if it is complete, end it with a newline)")
    if n_bad:
        last_start = starts[-1] if starts else 0
        listed = "; ".join(
            _fields_problem(line, n, len(header), line == last_start, ends_in_newline)
            for line, n in bad)
        more = f" (and {n_bad - len(bad)} more)" if n_bad > len(bad) else ""
        raise DamagedFileError(
            f"{path}: {n_bad} row{'s' if n_bad != 1 else ''} with the wrong number of fields: "
            f"{listed}{more}")
    return header, starts


def read_csv_text(path: Path | str, encoding: str | None = None, delimiter: str = ",",
                  skipinitialspace: bool = False) -> CsvText:
    """Decode and check ``path`` (see the module docstring); raises ``DamagedFileError``."""
    file = Path(path)
    data = file.read_bytes()
    text, name = decode_export(file, data, encoding)
    header, starts = scan_csv(file, text, delimiter, skipinitialspace)
    return CsvText(file, text, name, header, starts)
