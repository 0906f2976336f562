"""Batch scoring in Spark: every record of a CSV or Parquet input gets a species, or the reason it has none.

The model folder is shipped to the executors with addFile and loaded once per Python worker by
penguin-lab's own loader (no pickle, no code from the model). Records are checked by the reader's
rules (read.py); a broken record is flagged in `reason` (or dropped) and never fails the job.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from pathlib import Path

from .artifacts import METADATA_FILE, WEIGHTS_FILE
from .config import ISLAND, LABEL, MEASUREMENTS
from .errors import LabError

# What a broken rule means, in the reason column (the CLI's messages name a row; here the row is the record).
PHRASES = {"long_line": "the line is too long for a CSV row", "unclosed_quote": "a quoted field is never closed",
           "text_after_quote": "text after the closing quote of a field", "too_few_fields": "too few fields",
           "too_many_fields": "too many fields", "not_a_number": "is not a number",
           "impossible": "is not a possible measurement", "not_a_species": "is not a species"}
_PREDICTORS = {}  # per Python worker: the model, loaded on the first batch


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
    """The function mapInPandas runs on each partition: a frame of records in, the same with predictions out."""
    def score(batches):
        import pandas as pd

        from .predict import score_table

        predictor = _worker_predictor(name)
        for batch in batches:
            checked = batch["reason"].isna()
            if checked.all():  # the usual batch: every record follows the rules
                result = score_table(predictor, batch)
            else:
                result = pd.DataFrame({"predicted_species": pd.Series(None, index=batch.index, dtype=object),
                                       **{f"p_{s}": float("nan") for s in species}}, index=batch.index)
                result["reason"] = batch["reason"]
                if checked.any():
                    result.loc[checked] = score_table(predictor, batch.loc[checked])
            yield pd.concat([batch.drop(columns=["reason"]), result], axis=1)
    return score


def score(spark, model: str, data, out, drop_invalid: bool = False) -> dict:
    """Score `data` (CSV or Parquet, file or folder) with `model` (a folder, runs:/ or models:/ URI) into
    Parquet at `out`, written whole or not at all. Returns the counts and the time taken."""
    import shutil

    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from .artifacts import new_staging_folder, replace_dir
    from .distributed.workers import workers_import_this_package
    from .mlflow_models import is_model_uri, local_model_folder
    from .predict import Predictor
    from .read import records_of
    from .spark import shared_temporary_folder, spark_path

    started = time.perf_counter()
    out = check_score_output(Path(out))
    scratch = shared_temporary_folder("penguin-lab-score-")
    try:
        folder = local_model_folder(model, scratch / "download") if is_model_uri(model) else Path(model)
        predictor = Predictor(folder)  # on the driver first: a broken model is one line, before any task
        name = ship_model(spark, folder, scratch)
        records, files = records_of(spark, str(data), scratch, require_label=False)
        columns = [ISLAND, *MEASUREMENTS] + ([LABEL] if _has_label(spark, files) else [])
        rows = records.filter(F.col("kind") == "data").select(*columns, reason_column().alias("reason"))
        # Spark 3.5 gives a Python function the workers' environment when it is made, not when it runs: both happen
        # in workers that import this package (on Databricks it is on the notebook's sys.path only).
        with workers_import_this_package(spark):
            scored = rows.mapInPandas(scored_batches(name, predictor.species), output_schema(
                rows.drop("reason").schema, predictor.species))
            counts = Observation()
            scored = scored.observe(counts, F.count(F.lit(1)).alias("rows"), F.count("reason").alias("flagged"))
            if drop_invalid:
                scored = scored.filter(F.col("reason").isNull())
            staging = new_staging_folder(out, "scored Parquet")
            try:
                with arrow_batches(spark, 1 << 16):  # fewer, larger pandas batches: the model runs on whole arrays
                    scored.write.mode("overwrite").parquet(spark_path(str(staging)))
                found = counts.get
                replace_dir(staging, out)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"rows": found["rows"], "flagged": found["flagged"], "written": found["rows"] - (
        found["flagged"] if drop_invalid else 0), "out": str(out), "seconds": round(time.perf_counter() - started, 3)}


@contextlib.contextmanager
def arrow_batches(spark, rows: int):
    """Spark's Arrow batches of `rows` records for the block (the session's setting is restored after)."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, str(rows))
    try:
        yield
    finally:
        spark.conf.set(key, before)


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
    import os

    out = Path(os.path.abspath(out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"{out}: exists and is not a folder; expected a new folder for the scored Parquet")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not re.match(r"^(part-.*\.parquet|_SUCCESS|\..*\.crc)$", p.name)]
        if foreign:
            raise LabError(f"{out}: exists and holds {foreign[0]!r}, which is not scored Parquet; expected a new "
                           f"folder or an earlier `penguin-lab score` output")
    return out
