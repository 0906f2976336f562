"""From the lines of a file to checked records, in Spark: fields, kinds (blank, header, data), values, problems.

Every record keeps its place as (file, block, pos): `pos` is Spark's number for the record, which grows
in file order, and `block` the part of the file it was read from. Line numbers are worked out from
those (Numbering) only when a message or a caller needs them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import ISLAND, LABEL, MEASUREMENTS
from .errors import LabError
from .sniff import CsvFile, find_columns
from .spark import spark_path
from .validate import (MAX_LINE_CHARS, PROBLEM_TYPE, checked, folded, message, normalize_name, problem, sql_string,
                       stripped)

COLUMNS = [ISLAND, *MEASUREMENTS, LABEL]
PLACE = ["file", "block", "pos"]
# Spark numbers the records of a scan by partition; the file's index above those bits makes `pos` unique and in
# file order across files (a scan would need 2**15 partitions, 1 TB at 32 MB a task, to reach them).
FILE_BITS = 48
# Parquet and table columns of these types hold numbers already: checked as numbers, not as text.
NUMBER_TYPES = {"double", "float", "int", "bigint", "smallint", "tinyint"}
# Every character of validate.WHITESPACE is a control character, a space or beyond ASCII.
MAYBE_WHITESPACE = "[\\x00-\\x20\\x7f-\\x{10ffff}]"
# Quoted line breaks are rare; more than this many lines inside quotes is not a penguin file.
MAX_QUOTED_LINES = 1_000_000


def alike(keys: list) -> list:
    """The indexes of equal keys, a list per key in the order they first occur: the files one scan can read."""
    groups = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def same_layout(files: list) -> list:
    """The indexes of CSV files that one scan reads and one set of expressions parses: the same header, delimiter
    and `sep=` line, in the same folder (a folder's file names differ, and name each record's file)."""
    return alike([(str(Path(f.text_path).parent), f.delimiter, f.header_text, tuple(f.header),
                   tuple(f.position.items()), f.sep_line) for f in files])


def lines_of(spark, files: list, groups: list) -> list:
    """The lines of each group of CSV files (same_layout), one scan each: file index, block, position, value."""
    return [placed(spark.read.text, [files[i].text_path for i in group], group) for group in groups]


def placed(read, paths: list, indexes: list):
    """The files at `paths` (whose indexes in the input are `indexes`), read by `read` (Spark paths -> DataFrame)
    in one scan, with each record's PLACE in front: Spark would plan and compile a query's expressions once
    per scan. A scan tells its files apart by name, so files whose names are the same once symlinks are
    followed (two links to one file) are read by scans of their own."""
    if max(indexes) >= 1 << (63 - FILE_BITS):
        raise LabError(f"{Path(paths[0]).parent}: more than {1 << (63 - FILE_BITS)} files; expected fewer")
    scans = []  # per scan: the name Spark reads each of its files under -> (path, index)
    for path, index in zip(paths, indexes):
        name = Path(os.path.realpath(path) if os.path.islink(path) else path).name
        scan = next((files for files in scans if name not in files), None)
        if scan is None:
            scans.append(scan := {})
        scan[name] = (path, index)
    return union([_placed_scan(read([spark_path(str(path)) for path, _ in files.values()]), files)
                  for files in scans])


def _placed_scan(scan, files: dict):
    from pyspark.sql import functions as F

    indexes = [index for _, index in files.values()]
    file = F.lit(indexes[0]) if len(indexes) == 1 else _file_index(scan, files)
    with_file = scan.select(file.alias("file"), F.col("_metadata.file_block_start").alias("block"), "*")
    pos = F.shiftleft(F.col("file").cast("long"), FILE_BITS) + F.monotonically_increasing_id()
    return with_file.select("file", "block", pos.alias("pos"),
                            *[with_file[c] for c in with_file.columns if c not in ("file", "block")])


def _file_index(scan, files: dict):
    """The index of the file each record of `scan` comes from (`files`: name -> (path, index)), found by the
    file's name as Spark spells it (URI-quoted): a binary search over the sorted names, a few comparisons per
    record however many files there are. A name the search does not end on is an error, never a wrong file."""
    from urllib.parse import unquote, urlsplit

    from pyspark.sql import functions as F

    quoted = {unquote(name): name for name in (urlsplit(uri).path.rsplit("/", 1)[-1] for uri in scan.inputFiles())}
    unknown = [path for name, (path, _) in files.items() if name not in quoted]
    if unknown:
        raise LabError(f"{unknown[0]}: Spark does not list this file under its name (is the name valid UTF-8?); "
                       f"expected files that Spark can read")

    # One SQL expression: built from Column calls, each comparison would be several calls to the JVM.
    def search(found) -> str:
        if len(found) == 1:
            (spelled, plain, index), = found
            wrong = sql_string(f" was matched to {plain}")
            return (f"CASE WHEN _metadata.file_name = {sql_string(spelled)} THEN {index} "
                    f"ELSE raise_error(concat('a record of ', _metadata.file_name, {wrong})) END")
        middle = len(found) // 2
        return (f"CASE WHEN _metadata.file_name < {sql_string(found[middle][0])} THEN {search(found[:middle])} "
                f"ELSE {search(found[middle:])} END")
    return F.expr(search(sorted((quoted[plain], plain, index) for plain, (_, index) in files.items())))


def union(frames: list):
    """One DataFrame of several with the same columns (the partitions of each, in order)."""
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


# --- from a line to a record ---------------------------------------------------------------------------

def _fields(value, delimiter: str):
    """The fields of a line: a plain split, or a quote-aware one (with unquoting) when the line has quotes."""
    from pyspark.sql import functions as F

    d = "\\t" if delimiter == "\t" else re.escape(delimiter)
    outside_quotes = f'{d}(?=(?:[^"]*"[^"]*")*[^"]*\\z)'
    quoted = r'^"(?:[^"]|"")*"\z'

    def unquote(f):
        lead = F.ltrim(f)
        inside = lead.substr(F.lit(2), F.length(lead) - 2)
        return F.when(lead.rlike(quoted), F.regexp_replace(inside, '""', '"')).otherwise(f)

    has_quote = value.contains('"')  # a byte search; instr() compares the quote at every position
    fields = F.when(has_quote, F.transform(F.split(value, outside_quotes, -1), unquote)).otherwise(F.split(value, d, -1))
    # The same split, spelled differently on purpose: Spark would otherwise compute one shared copy of it for
    # every line, quotes or not, and the quote-aware split costs far more than the plain one.
    again = F.split(value, outside_quotes + "(?:)", -1)
    bad_quote = F.when(has_quote, F.exists(again, lambda f: F.ltrim(f).startswith('"') & ~F.ltrim(f).rlike(quoted)))
    return fields, F.coalesce(bad_quote, F.lit(False))


def csv_records(lines, f: CsvFile, require_label: bool):
    """The records of one CSV file's lines: kind (blank, sep, header or data), values and the first problem."""
    from pyspark.sql import functions as F

    value, fields, spaced = F.col("value"), F.col("fields"), F.col("spaced")
    split, bad_quote = _fields(value, f.delimiter)
    # Stripping costs more than splitting; a line with no character that could be white space needs none.
    tokens = lines.select(*PLACE, "value", split.alias("fields"), bad_quote.alias("bad_quote"),
                          value.rlike(MAYBE_WHITESPACE).alias("spaced"))
    count = F.size(fields)
    width, header_width = max(f.position.values()) + 1, len(f.header)
    texts = []
    for c, i in f.position.items():
        field = F.get(fields, F.lit(i))
        texts.append(F.when(spaced, stripped(field)).otherwise(field).alias(f"t_{c}"))
    names_again = F.lit(True)
    for column, i in f.position.items():  # a copy of the header inside the data, as `cat a.csv b.csv` leaves it
        names_again = names_again & (folded(F.get(fields, F.lit(i))) == normalize_name(column))
    # Only a field that cannot start a number, and long enough to fold to 'culmenlength' (lower() turns one
    # character into two at most), may be a column name: the costly comparison is skipped for data and for NA.
    first_character = F.substring(F.col("t_CulmenLength"), 1, 1)
    maybe_names = ((first_character != "") & ~first_character.isin(*"0123456789.+-")
                   & (F.length(F.col("t_CulmenLength")) * 2 >= len(normalize_name("CulmenLength"))))
    # A blank line is only white space and delimiters: it starts with one or the other.
    blank = (value == "") | ((spaced | value.startswith(f.delimiter)) & (stripped(value, f.delimiter) == ""))
    kind = (F.when(blank, "blank")
            .when(F.lit(f.sep_line is not None) & (value == F.lit(f.sep_line or "")), "sep")
            .when((value == f.header_text) | (maybe_names & names_again), "header").otherwise("data"))
    extra = F.slice(fields, header_width + 1, F.greatest(count - header_width, F.lit(1)))
    shape = (F.when(F.length(value) >= MAX_LINE_CHARS, problem("long_line"))
             .when(F.col("bad_quote"), problem("text_after_quote"))
             .when(count < width, problem("too_few_fields", None, count))
             .when((count > header_width) & F.exists(extra, lambda x: stripped(x) != ""),
                   problem("too_many_fields", None, count)))
    quotes = F.length(value) - F.length(F.regexp_replace(value, '"', ""))
    odd_quotes = F.when(value.contains('"'), quotes % 2 == 1).otherwise(F.lit(False))
    cells = (tokens.select(*PLACE, "value", "fields", "spaced", *texts, shape.alias("shape"))
             .select(*PLACE, kind.alias("kind"), odd_quotes.alias("odd_quotes"), *[f"t_{c}" for c in f.position],
                     "shape"))
    return checked(cells, [*PLACE, "kind", "odd_quotes"], f.delimiter != ",", require_label)


def table_records(frame, where: str, require_label: bool):
    """Records of Parquet files or a table (with PLACE columns): columns found by name, checked by the same rules."""
    from pyspark.sql import functions as F

    names = [c for c in frame.columns if c not in PLACE]
    position = find_columns(names, require_label, where, 1, ",")
    types = dict(frame.dtypes)
    typed = {c for c, i in position.items() if c in [*MEASUREMENTS, LABEL] and types[names[i]] in NUMBER_TYPES}
    # A number column stays a number: a measurement as a double, the species (an index) as it is, so that a
    # message shows its value as written ('1.5', not a double's 1.100000023841858 of a float 1.1).
    cells = [(F.col(f"`{names[i]}`").cast("double") if c in MEASUREMENTS else F.col(f"`{names[i]}`")).alias(f"n_{c}")
             if c in typed else
             stripped(F.col(f"`{names[i]}`").cast("string")).alias(f"t_{c}") for c, i in position.items()]
    cells = frame.select(*PLACE, F.lit("data").alias("kind"), F.lit(False).alias("odd_quotes"), *cells,
                         F.lit(None).cast(PROBLEM_TYPE).alias("shape"))
    return checked(cells, [*PLACE, "kind", "odd_quotes"], False, require_label, typed=typed)


# --- line numbers, worked out when needed --------------------------------------------------------------

class Numbering:
    """Line (or row) numbers from (file, block, pos): a count of the lines in each block, done once."""

    def __init__(self, lines):
        self.lines = lines
        self._blocks = None

    def blocks(self) -> dict:
        if self._blocks is None:
            from pyspark.sql import functions as F

            counted = self.lines.groupBy("file", "block").agg(F.count("*").alias("n"), F.min("pos").alias("first"))
            before, self._blocks = {}, {}
            for row in sorted(counted.collect(), key=lambda r: (r["file"], r["block"])):
                offset = before.get(row["file"], 0)
                self._blocks[(row["file"], row["block"])] = (offset, row["first"])
                before[row["file"]] = offset + row["n"]
        return self._blocks

    def line(self, place) -> int:
        file, block, pos = place
        offset, first = self.blocks()[(file, block)]
        return offset + pos - first + 1

    def numbered(self, frame, spark):
        """`frame` with a `line` column, for every record (a broadcast join with the small block table)."""
        from pyspark.sql import functions as F

        table = spark.createDataFrame([(f, b, o, first) for (f, b), (o, first) in self.blocks().items()],
                                      "file int, block long, offset long, first long")
        return (frame.join(F.broadcast(table), ["file", "block"])
                .withColumn("line", F.col("offset") + F.col("pos") - F.col("first") + 1)
                .drop("offset", "first"))


def merge_quoted_lines(spark, lines, numbering: Numbering, files: list):
    """Lines inside a quoted field belong to the record the quote opened on: join them to it with \\n.

    Only the lines with an odd number of quotes are read by the driver; a quote left open is an error."""
    from pyspark.sql import functions as F

    quotes = F.length("value") - F.length(F.regexp_replace("value", '"', ""))
    numbered = numbering.numbered(lines, spark)
    odd = numbered.filter(quotes % 2 == 1).select("file", "line").orderBy("file", "line").limit(MAX_QUOTED_LINES + 1)
    by_file = {}
    for row in odd.collect():
        by_file.setdefault(row["file"], []).append(row["line"])
    continued = []
    for file, marks in by_file.items():
        if len(marks) % 2:
            raise LabError(message(files[file].where, marks[-1], {"kind": "unclosed_quote"}))
        for start, end in zip(marks[::2], marks[1::2]):
            continued += [(file, line, start) for line in range(start, end + 1)]
            if len(continued) > MAX_QUOTED_LINES:
                raise LabError(f"{files[file].where}: row {start}: more than {MAX_QUOTED_LINES} lines inside quotes; "
                               f"expected one line per penguin")
    table = spark.createDataFrame(continued, "file int, line long, start long")
    joined = numbered.join(F.broadcast(table), ["file", "line"], "left")
    single = joined.filter(F.col("start").isNull()).select("file", "block", "pos", "value")
    parts = F.array_sort(F.collect_list(F.struct("line", "value")))
    merged = (joined.filter(F.col("start").isNotNull()).groupBy("file", "start")
              .agg(F.min(F.struct("block", "pos")).alias("at"),
                   F.concat_ws("\n", F.transform(parts, lambda p: p["value"])).alias("value"))
              .select("file", "at.block", "at.pos", "value"))
    return single.unionByName(merged)
