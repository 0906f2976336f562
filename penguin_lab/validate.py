"""The one way the lab reads a penguin CSV: every problem is a LabError naming file, row and column.

Messages read `FILE: row N, column 'X': what is wrong; expected ...`, where N is the line number in
the file (the line a record starts on), as an editor shows it. The file is read as a stream, so a
large file costs memory for its values only.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import math
import re
import unicodedata
from array import array
from pathlib import Path

import pandas as pd

from .config import ISLAND, LABEL, MEASUREMENTS, SPECIES
from .errors import LabError

# Spellings of "no value" seen in real exports (R writes NA, pandas NaN, databases null, Excel #N/A).
MISSING = {"", "na", "n/a", "n.a.", "#n/a", "nan", "null", "none", "missing", "-", "?", "."}
DELIMITERS = ",;\t|"
UNITS = {"CulmenLength": "mm", "CulmenDepth": "mm", "FlipperLength": "mm", "BodyMass": "g"}
# No penguin measures a metre or weighs a tonne; anything larger is a unit or typing mistake, and
# values near float32's limit would turn into inf once scaled for the network.
MAX_MEASUREMENT = 1e6
# A penguin row is about 50 characters. A longer line is not a penguin CSV (or has an unclosed quote).
MAX_LINE_CHARS = 1 << 20
_HEAD_BYTES = 1 << 16
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_MAGIC = {  # signatures of files people mistake for CSVs
    b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook?); save it as CSV",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook; save it as CSV",
    b"\x1f\x8b": "a gzip archive; unpack it first",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\x80": "a pickle (a saved Python object)",
}


EXPECTED_SPECIES = f"0, 1, 2 or a species name ({', '.join(SPECIES)})"


def expected_measurement(column: str) -> str:
    return f"a positive number of {UNITS[column]} below {MAX_MEASUREMENT:g}"


def short(value: str, limit: int = 40) -> str:
    """repr() of a value for an error message: quoted, escaped, and never longer than a line."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def normalize_name(name: str) -> str:
    """Header names match ignoring case, spaces, punctuation and accents: 'culmen_length' is CulmenLength."""
    folded = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in folded.lower() if ch.isalnum() and not unicodedata.combining(ch))


def parse_number(value: str, decimal_comma: bool = False) -> float:
    """A plain decimal number; ValueError otherwise. `39,1` is 39.1 when the file allows it."""
    if decimal_comma and _DECIMAL_COMMA.match(value):
        value = value.replace(",", ".")
    if "_" in value:  # float() would read 39_1 as 391
        raise ValueError(value)
    return float(value)


def check_measurement(number: float) -> bool:
    return math.isfinite(number) and 0 < number < MAX_MEASUREMENT


_SPECIES_BY_NAME = {normalize_name(name): i for i, name in enumerate(SPECIES)}


def parse_species(value: str) -> int:
    """0/1/2 as in the lab's file, or the species name (any case, with or without accents, or the
    first word of a longer name such as 'Adelie Penguin (Pygoscelis adeliae)'). ValueError otherwise."""
    words = value.split()
    for candidate in (value, words[0] if words else ""):
        if normalize_name(candidate) in _SPECIES_BY_NAME:
            return _SPECIES_BY_NAME[normalize_name(candidate)]
    number = parse_number(value)
    if number.is_integer() and 0 <= number < len(SPECIES):
        return int(number)
    raise ValueError(value)


# --- bytes to text ----------------------------------------------------------------------------------

def _encoding(head: bytes, path: str) -> str:
    """The text encoding of a file from its first bytes, or a LabError if it is not text."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return encoding
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise LabError(f"{path}: this is {what}; expected a CSV text file")
    if b"\x00" in head:
        # UTF-16 without a byte order mark: it is that if it decodes to text holding the header.
        for encoding in ("utf-16-le", "utf-16-be"):
            sample = head[: len(head) // 2 * 2].decode(encoding, errors="replace")
            if "\x00" not in sample and normalize_name(ISLAND) in normalize_name(sample):
                return encoding
        raise LabError(f"{path}: this is a binary file; expected a CSV text file")
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in b"\t\n\r\x0b\x0c")
    if controls > len(head) // 100:
        raise LabError(f"{path}: this is a binary file; expected a CSV text file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut in two at the end of the sample
            return "cp1252"
    return "utf-8"


def _lines(text, path: str):
    """The file's lines (endings kept for the csv module), refusing absurdly long ones."""
    for number in itertools.count(1):
        line = text.readline(MAX_LINE_CHARS)
        if not line:
            return
        if len(line) >= MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise LabError(f"{path}: row {number}: longer than {MAX_LINE_CHARS} characters; "
                           f"expected CSV rows (is this a CSV file, or is a quote left open?)")
        yield line


# --- header -----------------------------------------------------------------------------------------

def _split(line: str, delimiter: str) -> list:
    try:
        return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
    except csv.Error:
        return line.split(delimiter)


def _sniff_delimiter(header_line: str, wanted: list) -> str:
    """The delimiter that splits the header into the most known column names (then the most columns)."""
    wanted = {normalize_name(c) for c in wanted}

    def score(d):
        cells = _split(header_line, d)
        return sum(normalize_name(c) in wanted for c in cells), len(cells)

    return max(DELIMITERS, key=score)


def _find_columns(names: list, require_label: bool, path: str, line: int, delimiter: str) -> dict:
    required = [ISLAND, *MEASUREMENTS] + ([LABEL] if require_label else [])
    optional = [] if require_label else [LABEL]
    normalized = [normalize_name(n) for n in names]
    position = {}
    for column in required + optional:
        hits = [i for i, n in enumerate(normalized) if n == normalize_name(column)]
        if len(hits) > 1:
            where = ", ".join(str(i + 1) for i in hits)
            raise LabError(f"{path}: row {line}, column {column!r}: appears {len(hits)} times in the header "
                           f"(columns {where}); expected it once")
        if hits:
            position[column] = hits[0]
    missing = [c for c in required if c not in position]
    if missing:
        found = ", ".join(short(n, 30) for n in names[:12] if n) + (", ..." if len(names) > 12 else "")
        plural = "s" if len(missing) > 1 else ""
        raise LabError(f"{path}: row {line}, column{plural} {', '.join(repr(m) for m in missing)}: missing from "
                       f"the header; expected a header with {', '.join(required)} (found {found or 'no names'}, "
                       f"delimiter {delimiter!r})")
    return position


# --- rows -------------------------------------------------------------------------------------------

class _BadValue(Exception):
    def __init__(self, column, message):
        self.column, self.message = column, message


class _Columns:
    """Parsed values kept in compact arrays (a large file would not fit as Python objects per row)."""

    def __init__(self):
        self.row = array("q")
        self.island = []
        self.islands = {}  # one string object per island name
        self.values = {c: array("d") for c in [*MEASUREMENTS, LABEL]}

    def append(self, line, island, numbers):
        self.row.append(line)
        self.island.append(self.islands.setdefault(island, island) if island is not None else None)
        for column, number in zip([*MEASUREMENTS, LABEL], numbers):
            self.values[column].append(number)

    def frame(self) -> pd.DataFrame:
        import numpy as np

        data = {"Row": np.array(self.row, dtype=np.int64), ISLAND: pd.Series(self.island, dtype=object)}
        for column, values in self.values.items():
            data[column] = np.array(values, dtype=np.float64)
        return pd.DataFrame(data)


def _parse_row(fields, position, decimal_comma):
    island = fields[position[ISLAND]].strip()
    island = None if island.lower() in MISSING else island
    numbers = []
    for column in MEASUREMENTS:
        value = fields[position[column]].strip()
        if value.lower() in MISSING:
            numbers.append(math.nan)
            continue
        try:
            number = parse_number(value, decimal_comma)
        except ValueError:
            raise _BadValue(column, f"{short(value)} is not a number; expected "
                                    f"{expected_measurement(column)} (or empty if unknown)") from None
        if not check_measurement(number):
            raise _BadValue(column, f"{short(value)} is not a possible measurement; expected "
                                    f"{expected_measurement(column)} (or empty if unknown)")
        numbers.append(number)
    value = fields[position[LABEL]].strip() if LABEL in position else ""
    if value.lower() in MISSING:
        numbers.append(math.nan)
    else:
        try:
            numbers.append(float(parse_species(value)))
        except ValueError:
            raise _BadValue(LABEL, f"{short(value)} is not a species; expected {EXPECTED_SPECIES}") from None
    return island, numbers


def _is_header_again(fields, position) -> bool:
    """A copy of the header inside the data, as `cat a.csv b.csv` leaves it."""
    return all(i < len(fields) and normalize_name(fields[i]) == normalize_name(c) for c, i in position.items())


def _read(text, path: str, require_label: bool, drop_invalid: bool):
    lines = _lines(text, path)
    # The first non-blank line is the header; the delimiter is the one that splits it into known names.
    skipped = []
    for line in lines:
        skipped.append(line)
        if line.strip():
            break
    else:
        raise LabError(f"{path}: the file is empty; expected a header line with "
                       f"{', '.join([ISLAND, *MEASUREMENTS, LABEL])}")
    # Excel may write a first line such as `sep=;` that names the delimiter.
    declared = re.fullmatch(r"sep=(.)", skipped[-1].strip("\r\n"), re.IGNORECASE)
    sep_line = len(skipped) if declared else None
    delimiter = declared.group(1) if declared else _sniff_delimiter(skipped[-1], [ISLAND, *MEASUREMENTS, LABEL])
    decimal_comma = delimiter != ","  # 39,1 in a semicolon-separated European export
    reader = csv.reader(itertools.chain(skipped, lines), delimiter=delimiter, skipinitialspace=True, strict=True)

    def records():
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if "unexpected end of data" in str(e) or "field larger" in str(e):
                    hint = "a quoted field that starts here is never closed"
                elif "expected after" in str(e):
                    hint = "text after the closing quote of a field"
                else:
                    hint = str(e)
                raise LabError(f"{path}: row {start}: {hint}; expected well-formed CSV "
                               f"(quotes around a whole field, doubled inside it)") from None
            yield start, fields

    rows = records()
    header_line, header = None, []
    for header_line, fields in rows:
        if header_line != sep_line and any(cell.strip() for cell in fields):
            header = [cell.strip() for cell in fields]
            break
    position = _find_columns(header, require_label, path, header_line, delimiter)
    width = max(position.values()) + 1

    columns, invalid, repeated_headers, data_rows = _Columns(), 0, 0, 0
    for line, fields in rows:
        if not any(f.strip() for f in fields):
            continue  # blank line
        if _is_header_again(fields, position):
            repeated_headers += 1
            continue
        data_rows += 1
        try:
            if len(fields) < width:
                raise _BadValue(None, f"has {len(fields)} field{'s' if len(fields) != 1 else ''}; expected "
                                      f"{len(header)} as in the header (delimiter {delimiter!r})")
            if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
                raise _BadValue(None, f"has {len(fields)} fields; expected {len(header)} as in the header "
                                      f"(is a value with a {delimiter!r} in it missing its quotes?)")
            island, numbers = _parse_row(fields, position, decimal_comma)
        except _BadValue as bad:
            if drop_invalid:
                invalid += 1
                continue
            where = f"row {line}" + (f", column {bad.column!r}" if bad.column else "")
            raise LabError(f"{path}: {where}: {bad.message}") from None
        columns.append(line, island, numbers)

    if not len(columns.row):
        if data_rows:
            raise LabError(f"{path}: all {data_rows} data rows are invalid and were dropped (--drop-invalid); "
                           f"expected at least one valid row")
        raise LabError(f"{path}: row {header_line}: no data rows after the header; expected one row per penguin")
    frame = columns.frame()
    frame.attrs["repeated_header_rows"] = repeated_headers
    return frame, invalid


def read_penguins_csv(path, require_label: bool = True, drop_invalid: bool = False) -> tuple[pd.DataFrame, int]:
    """Read a penguin CSV into a DataFrame: Row (line number in the file), Island, the measurements, Species.

    Columns are found by name (any order, any case, extra ones ignored). Missing values become
    NaN/None (Spark drops those rows later, as the lab does). A value that is present but wrong is an
    error naming its row and column, or, with drop_invalid, its row is dropped and counted. Copies of
    the header inside the data are skipped (frame.attrs["repeated_header_rows"] counts them).
    Returns (frame, invalid_rows_dropped).
    """
    path = str(path)
    p = Path(path)
    try:
        if p.is_dir():
            raise LabError(f"{path}: is a folder; expected a CSV file")
        binary = open(p, "rb")
    except FileNotFoundError:
        raise LabError(f"{path}: no such file; expected a CSV file") from None
    except (OSError, ValueError) as e:
        raise LabError(f"{path}: cannot open: {getattr(e, 'strerror', None) or e}") from None
    with binary:
        try:
            head = binary.read(_HEAD_BYTES)
            encoding = _encoding(head, path)
            if binary.seekable():
                binary.seek(0)
            else:  # a pipe (e.g. /dev/stdin): keep it, so it can be read twice
                binary = io.BytesIO(head + binary.read())
            try:
                return _read_as(binary, encoding, path, require_label, drop_invalid)
            except UnicodeDecodeError as e:
                if encoding != "utf-8":
                    raise LabError(f"{path}: not valid {encoding} text ({e.reason}); "
                                   f"expected a CSV in UTF-8, UTF-16 or Windows-1252") from None
            # Valid UTF-8 at the start but not further on: an 8-bit (Windows-1252) file after all.
            binary.seek(0)
            return _read_as(binary, "cp1252", path, require_label, drop_invalid)
        except OSError as e:
            raise LabError(f"{path}: cannot read: {e.strerror or e}") from None


def _read_as(binary, encoding: str, path: str, require_label: bool, drop_invalid: bool):
    # Windows-1252 leaves five byte values undefined; those become U+FFFD instead of failing.
    errors = "replace" if encoding == "cp1252" else "strict"
    text = io.TextIOWrapper(binary, encoding=encoding, errors=errors, newline="")
    try:
        return _read(text, path, require_label, drop_invalid)
    finally:
        text.detach()  # the caller owns `binary` (and may read it again)
