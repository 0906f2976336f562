"""Batch scoring in Spark: every record of a CSV or Parquet input gets a species, or the reason it has none.

The model folder is shipped to the executors with addFile and loaded once per Python worker by
penguin-lab's own loader (no pickle, no code from the model). Records are checked by the reader's
rules (read.py); a broken record is flagged in `reason` (or dropped) and never fails the job. Each Python
worker writes its share of the output as Parquet itself, into a staging folder beside the output that the
driver renames into place once every task is done.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from pathlib import Path

from .artifacts import METADATA_FILE, WEIGHTS_FILE
from .config import ISLAND, LABEL, MEASUREMENTS, ROW_GROUP_BYTES
from .errors import LabError

# What a broken rule means, in the reason column (the CLI's messages name a row; here the row is the record).
PHRASES = {"long_line": "the line is too long for a CSV row", "unclosed_quote": "a quoted field is never closed",
           "text_after_quote": "text after the closing quote of a field", "too_few_fields": "too few fields",
           "too_many_fields": "too many fields", "not_a_number": "is not a number",
           "impossible": "is not a possible measurement", "not_a_species": "is not a species"}
_PREDICTORS = {}  # per Python worker: the model, loaded on the first batch
ARROW_BATCH_ROWS = 1 << 16  # records per Arrow batch handed to a worker: the model runs on whole arrays


def ship_model(spark, folder: Path, scratch: Path) -> str:
    """Send a model folder's two files to every executor (addFile takes files, not folders, on a cluster);
    returns the name they are shipped under."""
    import shutil

    name = f"penguin-model-{uuid.uuid4().hex[:12]}"
    for file in (METADATA_FILE, WEIGHTS_FILE):
        shutil.copyfile(folder / file, scratch / f"{name}-{file}")
        spark.sparkContext.addFile(str(scratch / f"{name}-{file}"))
    return name


def _worker_predictor(name: str):
    """The shipped model, loaded once per Python worker into a folder of its own."""
    if name not in _PREDICTORS:
        import atexit
        import shutil
        import tempfile

        import torch
        from pyspark import SparkFiles

        from .predict import Predictor

        torch.set_num_threads(1)  # one Python worker per core already
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        atexit.register(shutil.rmtree, folder, True)
        for file in (METADATA_FILE, WEIGHTS_FILE):
            shutil.copyfile(SparkFiles.get(f"{name}-{file}"), folder / file)
        _PREDICTORS[name] = Predictor(folder)
    return _PREDICTORS[name]


def reason_column():
    """The broken rule of a checked record as a short text, null when it follows every rule."""
    from pyspark.sql import functions as F

    problem = F.col("problem")
    phrase = F.create_map(*[F.lit(x) for pair in PHRASES.items() for x in pair])[problem["kind"]]
    with_value = F.concat(problem["column"], F.lit(": '"), problem["value"], F.lit("' "), phrase)
    return F.when(problem.isNotNull(), F.coalesce(with_value, phrase))


def output_schema(input_schema, species: list):
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    return StructType([*input_schema.fields, StructField("predicted_species", StringType()),
                       *[StructField(f"p_{name}", DoubleType()) for name in species],
                       StructField("reason", StringType())])


def scored_batches(name: str, species: list):
    """The function mapInArrow runs on each partition: Arrow batches of records in, the same records with
    predictions out. The input columns pass through with their values untouched (the island as a dictionary of
    its spellings); only the model's inputs become arrays."""
    def score(batches):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from .predict import score_columns

        species_names = pa.array(species, pa.string())
        for batch in batches:
            predictor = _worker_predictor(name)  # loaded on the first batch: an empty partition needs no PyTorch
            islands = pc.dictionary_encode(batch.column(ISLAND))
            measurements = [batch.column(m).cast(pa.float64()).to_numpy(zero_copy_only=False) for m in MEASUREMENTS]
            probabilities, why, reasons = score_columns(predictor, islands.indices.fill_null(-1).to_numpy(),
                                                        islands.dictionary.to_pylist(), measurements)
            flagged = batch.column("reason").is_valid().to_numpy(zero_copy_only=False)  # broke a reading rule
            unscorable = why >= 0  # by the model: an island it does not know, a missing or impossible value
            unscored = unscorable | flagged
            # Text columns as indexes into their few distinct values: the Parquet writer then takes the dictionary
            # it writes as it is, instead of hashing every value to build one.
            predicted = pa.DictionaryArray.from_arrays(
                pa.array(probabilities.argmax(axis=1).astype(np.int32), mask=unscored), species_names)
            reason = batch.column("reason")
            if unscorable.any():
                reason = pc.coalesce(reason, pc.take(pa.array(reasons, pa.string()), pa.array(why, mask=why < 0)))
            inputs = [c for c in batch.schema.names if c != "reason"]
            columns = [islands if name == ISLAND else batch.column(name) for name in inputs]
            columns += [predicted, *[pa.array(probabilities[:, i], mask=unscored) for i in range(len(species))], reason]
            yield pa.RecordBatch.from_arrays(columns, names=[*inputs, "predicted_species",
                                                             *[f"p_{s}" for s in species], "reason"])
    return score


def scored_files(name: str, species: list, folder: str, drop_invalid: bool):
    """The function mapInArrow runs on each partition: its records scored (scored_batches) and written by the
    Python worker itself as one Parquet file in `folder`, named by partition and task attempt. What comes back
    to Spark is one row: the file and its counts. The records never return to the JVM to be written there,
    which would cost more than reading, checking and scoring them."""
    def write(batches):
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyspark import TaskContext

        task = TaskContext.get()
        path = Path(folder) / f"part-{task.partitionId():05d}-{task.taskAttemptId()}.parquet"
        writer, pending, counts = None, [], {"rows": 0, "flagged": 0, "written": 0}
        if not Path(folder).is_dir():  # not shared with the driver: its name tells the driver (keep_only)
            yield pa.RecordBatch.from_pylist([{"file": path.name, **counts}], schema=part_schema())
            return
        try:
            for batch in scored_batches(name, species)(batches):
                flagged = batch.num_rows - batch.column("reason").null_count
                counts["rows"] += batch.num_rows
                counts["flagged"] += flagged
                if drop_invalid and flagged:
                    batch = batch.filter(pc.is_null(batch.column("reason")))
                counts["written"] += batch.num_rows
                if batch.num_rows:
                    pending.append(batch)
                if pending and sum(b.nbytes for b in pending) >= ROW_GROUP_BYTES:
                    writer = write_row_group(writer, path, pending)
                    pending = []
            if pending:
                writer = write_row_group(writer, path, pending)
        finally:
            if writer is not None:
                writer.close()
        yield pa.RecordBatch.from_pylist([{"file": path.name if writer is not None else None, **counts}],
                                         schema=part_schema())
    return write


def part_schema():
    """What a worker returns for its file: the mapInArrow result's declared types, exactly."""
    import pyarrow as pa

    return pa.schema([("file", pa.string()), ("rows", pa.int64()), ("flagged", pa.int64()), ("written", pa.int64())])


def write_row_group(writer, path: Path, batches: list):
    """Append `batches` to the Parquet file at `path` as one row group; the writer, opened on first use."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if writer is None:  # probabilities are all different: a dictionary of them would be built only to be dropped
        schema = batches[0].schema
        # Without Arrow's schema in the file, readers see the text columns as the plain strings they hold, not
        # as the dictionaries they were written from.
        writer = pq.ParquetWriter(path, schema, use_dictionary=[c for c in schema.names if not c.startswith("p_")],
                                  store_schema=False)
    # One dictionary per column for the whole row group: each batch's islands come in the order they first
    # appear, and a column whose dictionary changes within a row group is written plain from there on.
    writer.write_table(pa.Table.from_batches(batches).unify_dictionaries())
    return writer


def records_to_score(spark, data, scratch: Path):
    """The data records of an input, as scoring hands them to its workers: the Island, the measurements
    and the species when the input has one, then `reason` (the reading rule a record broke, or null)."""
    from pyspark.sql import functions as F

    from .read import records_of

    records, files = records_of(spark, str(data), scratch, require_label=False)
    columns = [ISLAND, *MEASUREMENTS] + ([LABEL] if _has_label(spark, files) else [])
    return records.filter(F.col("kind") == "data").select(*columns, reason_column().alias("reason"))


def score(spark, model: str, data, out, drop_invalid: bool = False, started: float | None = None) -> dict:
    """Score `data` (CSV or Parquet, file or folder) with `model` (a folder, runs:/ or models:/ URI) into
    Parquet at `out`, written whole or not at all. Returns the counts and the seconds since `started` (a
    time.perf_counter(); by default, the call)."""
    import shutil

    from .artifacts import new_staging_folder, replace_dir
    from .distributed.workers import workers_import_this_package
    from .mlflow_models import is_model_uri, local_model_folder
    from .predict import Predictor
    from .spark import shared_temporary_folder

    started = time.perf_counter() if started is None else started
    out = check_score_output(Path(out))
    scratch = shared_temporary_folder("penguin-lab-score-")
    try:
        folder = local_model_folder(model, scratch / "download") if is_model_uri(model) else Path(model)
        predictor = Predictor(folder)  # on the driver first: a broken model is one line, before any task
        name = ship_model(spark, folder, scratch)
        rows = records_to_score(spark, data, scratch)
        # Workers write into `attempts`; the kept files are moved to `staging`, and `attempts` is removed before
        # `staging` becomes `out`, so a task attempt still running (a duplicate, or one being killed) cannot
        # write into the output.
        attempts, staging = (new_staging_folder(out, "scored Parquet") for _ in range(2))
        try:
            # Spark 3.5 gives a Python function the workers' environment when it is made, not when it runs: both
            # happen in workers that import this package (on Databricks it is on the notebook's sys.path only).
            with workers_import_this_package(spark), arrow_batches(spark, ARROW_BATCH_ROWS):
                parts = rows.mapInArrow(scored_files(name, predictor.species, str(attempts), drop_invalid),
                                        "file string, rows long, flagged long, written long").collect()
            keep_only(attempts, staging, parts, output_schema(rows.drop("reason").schema, predictor.species))
            replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(attempts, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = {key: sum(part[key] for part in parts) for key in ("rows", "flagged", "written")}
    return {**found, "out": str(out), "seconds": round(time.perf_counter() - started, 3)}


def keep_only(attempts: Path, staging: Path, parts: list, schema) -> None:
    """Move to `staging` the files in `attempts` of the task attempts whose results Spark kept (a failed or
    duplicate attempt may have written one of its own), and mark `staging` complete as Spark does. No records
    at all: one empty file with the output's columns, so that the folder still reads as Parquet."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    kept = sorted({part["file"] for part in parts if part["file"]})
    unseen = [name for name in kept if not (attempts / name).is_file()]
    if unseen:
        raise LabError(f"{staging.parent}: a worker wrote {unseen[0]} in a folder this machine does not see, or "
                       f"could not see the folder; expected an output folder on a file system that the driver and "
                       f"the workers share")
    for name in kept:
        os.replace(attempts / name, staging / name)
    if not kept:
        pq.write_table(to_arrow_schema(schema).empty_table(), staging / "part-00000-0.parquet")
    (staging / "_SUCCESS").touch()


@contextlib.contextmanager
def arrow_batches(spark, rows: int):
    """Spark's Arrow batches of `rows` records for the block, with no limit in bytes (the session's settings
    are restored after). Spark 4 measures a batch after every record to keep it under its byte limit,
    unless the limit is the largest int; a batch of penguins is a few MB."""
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(rows),
                "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1)}
    before = {key: spark.conf.get(key, None) for key in settings}
    try:
        for key, value in settings.items():
            spark.conf.set(key, value)
        yield
    finally:
        for key, value in before.items():
            spark.conf.set(key, value) if value is not None else spark.conf.unset(key)


def _has_label(spark, files) -> bool:
    """Whether the input has a species column (kept in the output, beside the prediction)."""
    if files and hasattr(files[0], "position"):  # CSV files, with the columns found in their headers
        return any(LABEL in f.position for f in files)
    import pyarrow.parquet as pq

    from .sniff import find_columns
    from .spark import spark_path

    first = Path(files[0])
    if first.is_file():
        names = pq.read_schema(first).names
    elif first.is_dir():  # a Delta folder
        names = spark.read.format("delta").load(spark_path(str(first))).columns
    else:
        names = spark.read.table(files[0]).columns
    return LABEL in find_columns(names, False, str(first), 1, ",")


def check_score_output(out: Path) -> Path:
    """A new folder, or one this command wrote before (Parquet part files only): nobody's data is replaced."""
    out = Path(os.path.abspath(out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"{out}: exists and is not a folder; expected a new folder for the scored Parquet")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not re.match(r"^(part-.*\.parquet|_SUCCESS|\..*\.crc)$", p.name)]
        if foreign:
            raise LabError(f"{out}: exists and holds {foreign[0]!r}, which is not scored Parquet; expected a new "
                           f"folder or an earlier `penguin-lab score` output")
    return out
