"""Batch scoring in Spark: every record of a CSV or Parquet input gets a species, or the reason it has none.

The model folder is shipped to the executors with addFile and loaded once per Python worker by
penguin-lab's own loader (no pickle, no code from the model). Records are checked by the reader's
rules (read.py); a broken record is flagged in `reason` (or dropped) and never fails the job.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from .config import ISLAND, LABEL, MEASUREMENTS
from .errors import LabError

# What a broken rule means, in the reason column (the CLI's messages name a row; here the row is the record).
PHRASES = {"long_line": "the line is too long for a CSV row", "unclosed_quote": "a quoted field is never closed",
           "text_after_quote": "text after the closing quote of a field", "too_few_fields": "too few fields",
           "too_many_fields": "too many fields", "not_a_number": "is not a number",
           "impossible": "is not a possible measurement", "not_a_species": "is not a species"}
_PREDICTORS = {}  # per Python worker: the model, loaded on the first batch


def _worker_predictor(name: str):
    if name not in _PREDICTORS:
        import torch
        from pyspark import SparkFiles

        from .predict import Predictor

        torch.set_num_threads(1)  # one Python worker per core already
        _PREDICTORS[name] = Predictor(Path(SparkFiles.get(name)))
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
            result = pd.DataFrame({"predicted_species": pd.Series([None] * len(batch), dtype=object),
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
    import tempfile

    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from .artifacts import new_staging_folder, replace_dir
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
        name = f"penguin-model-{uuid.uuid4().hex[:12]}"
        shutil.copytree(folder, scratch / name)
        spark.sparkContext.addFile(str(scratch / name), recursive=True)
        records, files = records_of(spark, str(data), scratch, require_label=False)
        columns = [ISLAND, *MEASUREMENTS] + ([LABEL] if _has_label(files) else [])
        rows = records.filter(F.col("kind") == "data").select(*columns, reason_column().alias("reason"))
        scored = rows.mapInPandas(scored_batches(name, predictor.species), output_schema(
            rows.drop("reason").schema, predictor.species))
        counts = Observation()
        scored = scored.observe(counts, F.count(F.lit(1)).alias("rows"), F.count("reason").alias("flagged"))
        if drop_invalid:
            scored = scored.filter(F.col("reason").isNull())
        staging = new_staging_folder(out, "scored Parquet")
        try:
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


def _has_label(files) -> bool:
    """Whether the input has a species column (kept in the output, beside the prediction)."""
    return any(LABEL in getattr(f, "position", {}) for f in files)


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
