"""Spark reads the penguins: a CSV file or folder, a Parquet file or folder, or a table; every record is checked.

Every record keeps its place in its file as (file, block, position): Spark numbers records within
each block of a file as it reads them. Line numbers are worked out from those only when a message or
a caller needs them, so a valid file of any size is read without collecting anything on the driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import ISLAND, LABEL, MEASUREMENTS, ROW_GROUP_BYTES
from .errors import LabError
from .records import (COLUMNS, PLACE, Numbering, alike, csv_records, lines_of, merge_quoted_lines, placed,
                      same_layout, table_records, union)
from .sniff import sniff_csv
from .spark import read_parquet, spark_path, write_parquet
from .validate import PROBLEM_TYPE, message

# The island index is a model input: thousands of names mean the column holds something else.
MAX_ISLANDS = 1000
_TABLE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_`][\w`-]*){1,2}$")


@dataclass
class Summary:
    """What one pass over every record found."""

    data_rows: int = 0
    header_rows: int = 0
    invalid_rows: int = 0
    odd_quote_lines: int = 0
    complete_rows: int = 0
    first_problem: dict | None = None
    islands: list = field(default_factory=list)  # (name, position of its first record)
    ranges: dict = field(default_factory=dict)


# --- where the data is ---------------------------------------------------------------------------------

def _is_parquet(path: Path) -> bool:
    if not path.is_file():  # a pipe can be read only once: it is taken for CSV
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def _parquet_columns(path: Path) -> tuple:
    """The names and types of a Parquet file's columns, from its footer; a file that starts like Parquet but
    whose footer cannot be read is refused before Spark tries."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise LabError(f"{path}: not a valid Parquet file ({str(e).splitlines()[0][:120]}); "
                       f"expected a CSV or Parquet file") from None
    return tuple((column.name, str(column.type)) for column in schema)


def _parquet(spark, files: list, require_label: bool):
    """(records, lines) of Parquet files: one scan for all the files with the same columns and types."""
    records, lines = [], []
    for indexes in alike([_parquet_columns(f) for f in files]):
        frame = placed(lambda paths: spark.read.parquet(*paths), [files[i] for i in indexes], indexes)
        records.append(table_records(frame, str(files[indexes[0]]), require_label))
        lines.append(frame.select(*PLACE))
    return union(records), union(lines)


def _data_files(folder: Path) -> list:
    """The data files of a folder Spark (or a person) wrote: hidden and marker files are not data."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


# --- one pass over every record ----------------------------------------------------------------------

def summarize(records, folder: Path) -> tuple[Summary, str, object]:
    """Read every record once: Spark counts them and finds the first problem (observed metrics) while it
    writes the valid records as Parquet to a new folder inside `folder`; returns (summary, that path, their schema).

    The islands (with the position of each one's first record) and the measurement ranges then come
    from that Parquet, grouped by island: the driver receives one row per island name (at most
    MAX_ISLANDS + 2 are read). Nothing is cached in memory, whatever the size of the input."""
    import uuid

    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    data = F.col("kind") == "data"
    bad = data & F.col("problem").isNotNull()
    counts = Observation()
    observed = records.observe(
        counts, F.sum(data.cast("long")).alias("data"), F.sum((F.col("kind") == "header").cast("long")).alias("headers"),
        F.sum(bad.cast("long")).alias("invalid"), F.sum(F.col("odd_quotes").cast("long")).alias("odd"),
        F.min(F.when(bad, F.col("pos"))).alias("first_bad"))
    valid_path = spark_path(str(Path(folder) / f"valid-{uuid.uuid4().hex[:12]}"))
    valid = observed.filter(data & F.col("problem").isNull()).select(*PLACE, *COLUMNS)
    # In small row groups, so that each later read of them splits into as many tasks as the input's.
    valid_schema = write_parquet(valid, valid_path, {"parquet.block.size": ROW_GROUP_BYTES})
    found = counts.get
    summary = Summary(data_rows=found["data"] or 0, header_rows=found["headers"] or 0,
                      invalid_rows=found["invalid"] or 0, odd_quote_lines=found["odd"] or 0)
    complete = F.lit(True)
    for column in COLUMNS:
        complete = complete & F.col(column).isNotNull()
    groups = (read_parquet(records.sparkSession, valid_path, valid_schema).groupBy(ISLAND)
              .agg(F.sum(complete.cast("long")).alias("complete"), F.min("pos").alias("first"),
                   *[F.min(F.when(complete, F.col(c))).alias(f"min_{c}") for c in MEASUREMENTS],
                   *[F.max(F.when(complete, F.col(c))).alias(f"max_{c}") for c in MEASUREMENTS]))
    ranges = {}
    for group in groups.limit(MAX_ISLANDS + 2).collect():  # more groups than that is an error below anyway
        summary.complete_rows += group["complete"]
        if group[ISLAND] is not None:
            summary.islands.append((group[ISLAND], group["first"]))
            if len(summary.islands) > MAX_ISLANDS:
                summary.islands.append(None)  # more than anyone means: stop collecting
                break
        for c in MEASUREMENTS:
            low, high = group[f"min_{c}"], group[f"max_{c}"]
            if low is not None:
                old = ranges.get(c, [low, high])
                ranges[c] = [min(old[0], low), max(old[1], high)]
    summary.ranges = ranges
    if found["first_bad"] is not None:  # the one record to name: read again, found by its position
        row = records.filter(F.col("pos") == found["first_bad"]).select(*PLACE, "problem.*").first()
        summary.first_problem = {"at": (row["file"], row["block"], row["pos"]), "kind": row["kind"],
                                 "column": row["column"], "value": row["value"]}
    return summary, valid_path, valid_schema


# --- the reader ----------------------------------------------------------------------------------------

@dataclass
class Penguins:
    """The checked records of an input, as a Spark DataFrame, and what reading them found."""

    where: str
    records: object          # Spark DataFrame: PLACE, kind, odd_quotes, COLUMNS, problem (parsed when used)
    summary: Summary
    numbering: Numbering
    files: list              # CsvFile per file index (CSV), or names (Parquet)
    valid_path: str          # the valid records, as the read wrote them (Parquet in the scratch folder)
    valid_schema: object     # and their Spark schema

    def valid(self):
        """The data records that follow every rule: PLACE and COLUMNS (missing values are null)."""
        return read_parquet(self.records.sparkSession, self.valid_path, self.valid_schema)

    @property
    def repeated_header_rows(self) -> int:
        return max(0, self.summary.header_rows - len(self.files)) if self.files and hasattr(self.files[0], "header") \
            else 0

    def line(self, place) -> int:
        return self.numbering.line(place)

    def place(self, pos: int) -> tuple:
        """(file, block, pos) of the valid record at a position."""
        from pyspark.sql import functions as F

        row = self.valid().filter(F.col("pos") == pos).select(*PLACE).first()
        return row["file"], row["block"], row["pos"]

    def where_of(self, place) -> str:
        file = self.files[place[0]]
        return getattr(file, "where", file)


def _existing(path: str) -> str:
    if not Path(path).exists() and not _TABLE_NAME.match(path):
        raise LabError(f"{path}: no such file; expected a CSV file")
    return path


def records_of(spark, path, scratch: Path, require_label: bool = True):
    """(records, files) of an input, checked lazily: every record with its kind and problem, parsed when used
    (for batch scoring, where a broken record is flagged rather than an error). Quoted line breaks are
    not joined here."""
    records, _, files = _sources(spark, _existing(str(path)), Path(scratch), require_label)
    return records, files


def _sources(spark, path: str, scratch: Path, require_label: bool):
    """(records, lines, files) for a path: CSV, Parquet (file or folder), a Delta folder or a table name."""
    local = Path(path)
    if not local.exists() and _TABLE_NAME.match(path) and not path.lower().endswith((".csv", ".parquet", ".txt")):
        return _table(spark, path, spark.read.table(path), require_label)
    if local.is_dir() and (local / "_delta_log").is_dir():
        return _table(spark, path, spark.read.format("delta").load(spark_path(path)), require_label)
    files = _data_files(local) if local.is_dir() else [local]
    if local.is_dir() and not files:
        raise LabError(f"{path}: is a folder; expected a CSV file")  # or a folder holding CSV or Parquet files
    if all(_is_parquet(f) for f in files):
        records, lines = _parquet(spark, files, require_label)
        return records, lines, [str(f) for f in files]
    csvs = [sniff_csv(f, scratch, require_label, where=path if f is local else str(f)) for f in files]
    # Each group of files is parsed with its own header; the numbering sees the same scans in the same order.
    groups = same_layout(csvs)
    scans = lines_of(spark, csvs, groups)
    return _csv_records(scans, csvs, groups, require_label), union(scans), csvs


def _table(spark, where: str, frame, require_label: bool):
    from pyspark.sql import functions as F

    placed = frame.select(F.lit(0).alias("file"), F.spark_partition_id().cast("long").alias("block"),
                          F.monotonically_increasing_id().alias("pos"), "*")
    return table_records(placed, where, require_label), placed.select(*PLACE), [where]


def read_penguins(spark, path, scratch: Path | None = None, require_label: bool = True,
                  drop_invalid: bool = False) -> Penguins:
    """Read and check every record with Spark. A broken rule is a LabError naming file, row and column (or, with
    drop_invalid, the record is dropped and counted). `scratch` holds UTF-8 copies of files that need one
    (by default a temporary folder removed when Python exits) and the valid records as Parquet; Spark reads
    them lazily, so keep it while the records are in use."""
    path = str(path)
    scratch = Path(scratch) if scratch is not None else _temporary_folder()
    records, lines, files = _sources(spark, _existing(path), scratch, require_label)
    numbering = Numbering(lines)
    summary, valid_path, valid_schema = summarize(records, scratch)
    if summary.odd_quote_lines:
        records = _csv_merged(merge_quoted_lines(spark, lines, numbering, files), files, require_label)
        summary, valid_path, valid_schema = summarize(records, scratch)
    penguins = Penguins(path, records, summary, numbering, files, valid_path, valid_schema)
    _check(penguins, drop_invalid)
    return penguins


def _temporary_folder() -> Path:
    import atexit
    import shutil

    from .spark import shared_temporary_folder

    folder = shared_temporary_folder("penguin-lab-read-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _csv_merged(lines, files, require_label):
    """The records of CSV lines whose quoted line breaks are joined (merge_quoted_lines)."""
    from pyspark.sql import functions as F

    groups = same_layout(files)
    return _csv_records([lines.filter(F.col("file").isin(group)) for group in groups], files, groups, require_label)


def _csv_records(scans: list, files: list, groups: list, require_label: bool):
    """The records of each group's lines, parsed by the header of its first file (the same for all of them)."""
    return union([csv_records(lines, files[group[0]], require_label) for lines, group in zip(scans, groups)])


def _check(penguins: Penguins, drop_invalid: bool) -> None:
    summary = penguins.summary
    found = summary.first_problem
    if found is not None and not drop_invalid:
        file = penguins.files[found["at"][0]]
        if found["kind"] in ("too_few_fields", "too_many_fields"):
            found = {**found, "count": int(found["value"]), "header": len(file.header), "delimiter": file.delimiter}
        raise LabError(message(penguins.where_of(found["at"]), penguins.line(found["at"]), found))
    if summary.islands and summary.islands[-1] is None:
        raise LabError(f"{penguins.where}: column {ISLAND!r}: more than {MAX_ISLANDS} different names; "
                       f"expected the names of the islands the penguins live on")
    valid = summary.data_rows - summary.invalid_rows
    if valid == 0:
        if summary.data_rows:
            raise LabError(f"{penguins.where}: all {summary.data_rows} data rows are invalid and were dropped "
                           f"(--drop-invalid); expected at least one valid row")
        first = penguins.files[0]
        line = f"row {first.header_line}: " if hasattr(first, "header_line") else ""
        raise LabError(f"{penguins.where}: {line}no data rows after the header; expected one row per penguin")


def spelling_clash(islands: list):
    """The first two names that differ only in case ("Biscoe", "biscoe"), which the model would take for two
    islands, as ((name, place), (name, place)) in file order; None when every island has one spelling."""
    spellings = {}
    for name, place in sorted(islands, key=lambda item: item[1]):
        spellings.setdefault(name.casefold(), []).append((name, place))
    clashes = [names[:2] for names in spellings.values() if len(names) > 1]
    return min(clashes, key=lambda pair: pair[1][1]) if clashes else None


def spelling_message(where: str, first: str, first_row: int, other: str, other_row: int) -> str:
    return (f"{where}: row {other_row}, column {ISLAND!r}: {other!r} differs only in case from {first!r} "
            f"(row {first_row}); expected one spelling per island")


def check_island_spellings(penguins: Penguins) -> None:
    clash = spelling_clash(penguins.summary.islands)
    if clash:
        (first, first_pos), (other, other_pos) = clash
        first_at, other_at = penguins.place(first_pos), penguins.place(other_pos)
        raise LabError(spelling_message(penguins.where_of(other_at), first, penguins.line(first_at),
                                        other, penguins.line(other_at)))


class GivenNumbers(Numbering):
    """Rows that carry their line number as their position (rows built in memory)."""

    def line(self, place) -> int:
        return place[2]


def penguins_from_pandas(spark, frame, where: str) -> Penguins:
    """Checked records from a pandas frame of rows already read (Row, Island, measurements, Species)."""
    from pyspark.sql import functions as F

    schema = "pos long, Island string, CulmenLength double, CulmenDepth double, FlipperLength double, " \
             "BodyMass double, Species double"
    rows = spark.createDataFrame(frame[["Row", *COLUMNS]].astype({"Row": "int64"}), schema=schema)
    records = rows.select(F.lit(0).alias("file"), F.lit(0).cast("long").alias("block"), "pos",
                          F.lit("data").alias("kind"), F.lit(False).alias("odd_quotes"), *COLUMNS,
                          F.lit(None).cast(PROBLEM_TYPE).alias("problem"))
    summary, valid_path, valid_schema = summarize(records, _temporary_folder())
    return Penguins(where, records, summary, GivenNumbers(records), [where], valid_path, valid_schema)


def read_penguins_csv(path, require_label: bool = True, drop_invalid: bool = False, spark=None):
    """A small input's checked rows as pandas: Row (line number), Island, the measurements, Species.

    For `predict --csv` and for looking at a file: it collects every row on the driver. Returns
    (frame, invalid_rows_dropped); frame.attrs["repeated_header_rows"] counts skipped header copies."""
    import tempfile

    from .spark import get_spark

    spark = spark or get_spark()
    with tempfile.TemporaryDirectory(prefix="penguin-lab-read-") as scratch:
        penguins = read_penguins(spark, path, Path(scratch), require_label, drop_invalid)
        rows = penguins.numbering.numbered(penguins.valid(), spark).withColumnRenamed("line", "Row")
        frame = rows.select("Row", *COLUMNS).toPandas()
    frame = frame.sort_values("Row", kind="stable").reset_index(drop=True)
    for column in [*MEASUREMENTS, LABEL]:
        frame[column] = frame[column].astype("float64")
    frame[ISLAND] = frame[ISLAND].astype(object).where(frame[ISLAND].notna(), None)
    frame.attrs["repeated_header_rows"] = penguins.repeated_header_rows
    return frame, penguins.summary.invalid_rows
