"""The one way the lab reads a penguin CSV: every problem is a LabError naming file, row and column."""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from pathlib import Path

import pandas as pd

from .config import ISLAND, LABEL, MEASUREMENTS, SPECIES
from .errors import LabError

# Spellings of "no value" seen in real exports (R writes NA, pandas NaN, databases null).
MISSING = {"", "na", "n/a", "nan", "null", "none", "-", "?"}
DELIMITERS = ",;\t|"
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


def _decode(raw: bytes, path: str) -> str:
    """UTF-8 (with or without BOM) or UTF-16/32 with a BOM; other 8-bit text as Windows-1252."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
                          (codecs.BOM_UTF8, "utf-8-sig")):
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise LabError(f"{path}: not valid {encoding} text at byte {e.start}") from None
    if b"\x00" in raw[:4096]:
        raise LabError(f"{path}: this is a binary file, not a CSV text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def _number(value: str, delimiter: str) -> float:
    if delimiter != "," and _DECIMAL_COMMA.match(value):
        value = value.replace(",", ".")  # 39,1 in a semicolon-separated European export
    return float(value)


def _species(value: str) -> int:
    """0/1/2 as in the lab's file, or the species name."""
    by_name = {name.lower(): i for i, name in enumerate(SPECIES)}
    if value.lower() in by_name:
        return by_name[value.lower()]
    number = float(value)
    if number.is_integer() and 0 <= number < len(SPECIES):
        return int(number)
    raise ValueError(value)


def read_penguins_csv(path, require_label: bool = True, drop_invalid: bool = False) -> tuple[pd.DataFrame, int]:
    """Read a penguin CSV into a DataFrame (column Row = line number in the file).

    Missing values become NaN/None (Spark drops those rows later, as the lab does). A value that is
    present but wrong is an error naming its row and column, or, with drop_invalid, its row is
    dropped and counted. Returns (frame, invalid_rows_dropped).
    """
    path = str(path)
    p = Path(path)
    if not p.exists():
        raise LabError(f"{path}: no such file")
    if p.is_dir():
        raise LabError(f"{path}: is a folder, expected a CSV file")
    try:
        text = _decode(p.read_bytes(), path)
    except OSError as e:
        raise LabError(f"{path}: cannot read: {e.strerror}") from None
    if not text.strip():
        raise LabError(f"{path}: the file is empty; expected a header line with "
                       f"{', '.join([ISLAND, *MEASUREMENTS, LABEL])}")

    first_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = _sniff_delimiter(first_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = None
    for header in reader:
        if any(cell.strip() for cell in header):
            break
    names = [cell.strip() for cell in header]
    header_line = reader.line_num

    required = [ISLAND, *MEASUREMENTS] + ([LABEL] if require_label else [])
    optional = [] if require_label else [LABEL]
    position = {}
    lowered = [n.lower() for n in names]
    for column in required + optional:
        hits = [i for i, n in enumerate(lowered) if n == column.lower()]
        if len(hits) > 1:
            raise LabError(f"{path}: row {header_line}: column {column!r} appears {len(hits)} times in the header")
        if hits:
            position[column] = hits[0]
    missing = [c for c in required if c not in position]
    if missing:
        raise LabError(f"{path}: row {header_line}: missing column{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(missing)}; found {', '.join(names) or 'nothing'} "
                       f"(delimiter {delimiter!r})")

    records, invalid = [], 0
    width = max(position.values()) + 1
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank line
        try:
            if len(fields) < width:
                raise _BadValue(None, f"has {len(fields)} fields, expected at least {width}")
            records.append(_parse_row(fields, position, delimiter, line))
        except _BadValue as bad:
            if drop_invalid:
                invalid += 1
                continue
            where = f"row {line}" + (f", column {bad.column!r}" if bad.column else "")
            raise LabError(f"{path}: {where}: {bad.message}") from None

    columns = ["Row", ISLAND, *MEASUREMENTS, LABEL]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame = frame.astype({"Row": "int64", **{c: "float64" for c in [*MEASUREMENTS, LABEL]}})
    if frame.empty and not drop_invalid:
        raise LabError(f"{path}: no data rows after the header")
    return frame, invalid


class _BadValue(Exception):
    def __init__(self, column, message):
        self.column, self.message = column, message


def _parse_row(fields, position, delimiter, line):
    island = fields[position[ISLAND]].strip()
    row = [line, None if island.lower() in MISSING else island]
    for column in MEASUREMENTS:
        value = fields[position[column]].strip()
        if value.lower() in MISSING:
            row.append(math.nan)
            continue
        try:
            number = _number(value, delimiter)
        except ValueError:
            raise _BadValue(column, f"{value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise _BadValue(column, f"{value!r} is not a positive measurement")
        row.append(number)
    if LABEL in position:
        value = fields[position[LABEL]].strip() if position[LABEL] < len(fields) else ""
        if value.lower() in MISSING:
            row.append(math.nan)
        else:
            try:
                row.append(float(_species(value)))
            except ValueError:
                raise _BadValue(LABEL, f"{value!r} is not a species; expected 0, 1, 2 or "
                                       f"{', '.join(SPECIES)}") from None
    else:
        row.append(math.nan)
    return row
