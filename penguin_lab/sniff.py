"""What a CSV file is, from its first bytes and its header line, before Spark reads it.

Python reads only the head of each file: its encoding, delimiter, header and column positions. A
file Spark cannot read as UTF-8 text (UTF-16/32, Windows-1252, a pipe) is first copied as UTF-8 by a
streaming pass in fixed-size chunks, so any size costs the same memory. Line numbers stay as they are.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import ISLAND, LABEL, MEASUREMENTS
from .errors import LabError
from .validate import MAX_LINE_CHARS, normalize_name, short

DELIMITERS = ",;\t|"
_HEAD_BYTES = 1 << 16
_CHUNK = 1 << 22
_MAGIC = {  # signatures of files people mistake for CSVs
    b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook?); save it as CSV",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook; save it as CSV",
    b"\x1f\x8b": "a gzip archive; unpack it first",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\x80": "a pickle (a saved Python object)",
}


@dataclass
class CsvFile:
    """One CSV file as Spark will read it."""

    where: str           # the name errors show
    text_path: str       # a UTF-8 copy when the file is not UTF-8 already
    delimiter: str
    header_line: int     # line number of the header
    header: list         # its names, stripped
    header_text: str     # the header line as written
    position: dict       # column name -> field index
    sep_line: str | None  # Excel's `sep=;` line, if any


def encoding_of(head: bytes, where: str) -> str:
    """The text encoding of a file from its first bytes, or a LabError if it is not text."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return encoding
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise LabError(f"{where}: this is {what}; expected a CSV text file")
    if b"\x00" in head:
        # UTF-16 without a byte order mark: it is that if it decodes to text holding the header.
        for encoding in ("utf-16-le", "utf-16-be"):
            sample = head[: len(head) // 2 * 2].decode(encoding, errors="replace")
            if "\x00" not in sample and normalize_name(ISLAND) in normalize_name(sample):
                return encoding
        raise LabError(f"{where}: this is a binary file; expected a CSV text file")
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in b"\t\n\r\x0b\x0c")
    if controls > len(head) // 100:
        raise LabError(f"{where}: this is a binary file; expected a CSV text file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut in two at the end of the sample
            return "cp1252"
    return "utf-8"


def _lines(text, where: str):
    """The file's lines (endings kept for the csv module), refusing absurdly long ones."""
    for number in itertools.count(1):
        line = text.readline(MAX_LINE_CHARS)
        if not line:
            return
        if len(line) >= MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise LabError(f"{where}: row {number}: longer than {MAX_LINE_CHARS} characters; "
                           f"expected CSV rows (is this a CSV file, or is a quote left open?)")
        yield line


def _split(line: str, delimiter: str) -> list:
    try:
        return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
    except csv.Error:
        return line.split(delimiter)


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter that splits the header into the most known column names (then the most columns)."""
    wanted = {normalize_name(c) for c in [ISLAND, *MEASUREMENTS, LABEL]}

    def score(d):
        cells = _split(header_line, d)
        return sum(normalize_name(c) in wanted for c in cells), len(cells)

    return max(DELIMITERS, key=score)


def find_columns(names: list, require_label: bool, where: str, line: int, delimiter: str) -> dict:
    """Column name -> position in the header, found by normalized name; a LabError names what is missing."""
    required = [ISLAND, *MEASUREMENTS] + ([LABEL] if require_label else [])
    optional = [] if require_label else [LABEL]
    normalized = [normalize_name(n) for n in names]
    position = {}
    for column in required + optional:
        hits = [i for i, n in enumerate(normalized) if n == normalize_name(column)]
        if len(hits) > 1:
            at = ", ".join(str(i + 1) for i in hits)
            raise LabError(f"{where}: row {line}, column {column!r}: appears {len(hits)} times in the header "
                           f"(columns {at}); expected it once")
        if hits:
            position[column] = hits[0]
    missing = [c for c in required if c not in position]
    if missing:
        found = ", ".join(short(n, 30) for n in names[:12] if n) + (", ..." if len(names) > 12 else "")
        plural = "s" if len(missing) > 1 else ""
        raise LabError(f"{where}: row {line}, column{plural} {', '.join(repr(m) for m in missing)}: missing from "
                       f"the header; expected a header with {', '.join(required)} (found {found or 'no names'}, "
                       f"delimiter {delimiter!r})")
    return position


def _header(text, where: str, require_label: bool):
    """(delimiter, header line number, names, header text, sep line) from the first lines of the text."""
    lines = _lines(text, where)
    sep_line, checked_sep = None, False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not checked_sep:  # Excel may write a first line such as `sep=;` that names the delimiter
            checked_sep = True
            if re.fullmatch(r"sep=(.)", line.strip("\r\n"), re.IGNORECASE):
                sep_line = line.strip("\r\n")
                continue
        break
    else:
        raise LabError(f"{where}: the file is empty; expected a header line with "
                       f"{', '.join([ISLAND, *MEASUREMENTS, LABEL])}")
    delimiter = sep_line[-1] if sep_line else _sniff_delimiter(line)
    names = [cell.strip() for cell in _split(line, delimiter)]
    position = find_columns(names, require_label, where, number, delimiter)
    return delimiter, number, names, line.rstrip("\r\n"), sep_line, position


def _is_regular(path: Path) -> bool:
    return stat.S_ISREG(os.stat(path).st_mode)


def _copy(path: Path, scratch: Path) -> Path:
    copy = Path(scratch) / f"{len(list(Path(scratch).iterdir()))}-input"
    with open(path, "rb") as source, open(copy, "wb") as target:
        while chunk := source.read(_CHUNK):
            target.write(chunk)
    return copy


def _valid_utf8(path: Path) -> bool:
    """The whole file decodes as UTF-8 (checked in chunks: a Windows-1252 byte may come late)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _transcode(path: Path, encoding: str, scratch: Path, where: str) -> Path:
    """A UTF-8 copy of the file, written chunk by chunk into `scratch`."""
    copy = Path(scratch) / f"{len(list(Path(scratch).iterdir()))}-{path.name or 'input'}.utf8.csv"
    errors = "replace" if encoding == "cp1252" else "strict"  # cp1252 leaves five byte values undefined
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    try:
        with open(path, "rb") as source, open(copy, "w", encoding="utf-8", newline="") as target:
            while chunk := source.read(_CHUNK):
                target.write(decoder.decode(chunk))
            target.write(decoder.decode(b"", final=True))
    except UnicodeDecodeError as e:
        copy.unlink(missing_ok=True)
        raise LabError(f"{where}: not valid {encoding} text ({e.reason}); "
                       f"expected a CSV in UTF-8, UTF-16 or Windows-1252") from None
    return copy


def sniff_csv(path, scratch: Path, require_label: bool = True, where: str | None = None) -> CsvFile:
    """Read the head of a CSV file; copy it as UTF-8 into `scratch` first if Spark could not read it as it is."""
    path = Path(path)
    where = where or str(path)
    try:
        if path.is_dir():
            raise IsADirectoryError
        if not _is_regular(path):  # a pipe can be read once: keep its bytes for the passes below
            path = _copy(path, scratch)
        with open(path, "rb") as binary:
            head = binary.read(_HEAD_BYTES)
        encoding = encoding_of(head, where)
        if encoding in ("utf-8", "utf-8-sig") and not _valid_utf8(path):
            encoding = "cp1252"  # valid UTF-8 at the start but not further on: an 8-bit file after all
        text_path = path if encoding in ("utf-8", "utf-8-sig") else _transcode(path, encoding, scratch, where)
        with open(text_path, encoding="utf-8-sig", errors="replace", newline="") as text:
            delimiter, line, names, header_text, sep_line, position = _header(text, where, require_label)
    except FileNotFoundError:
        raise LabError(f"{where}: no such file; expected a CSV file") from None
    except IsADirectoryError:
        raise LabError(f"{where}: is a folder; expected a CSV file") from None
    except OSError as e:
        raise LabError(f"{where}: cannot open: {e.strerror or e}") from None
    return CsvFile(where, str(text_path), delimiter, line, names, header_text, position, sep_line)
