"""Batch scoring on Spark: `penguin-lab score`, and the logged MLflow model through mlflow.pyfunc.spark_udf."""

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, assert_one_line_error, run_cli
from spark_cluster import cluster_env, standalone_master  # noqa: F401 (a fixture)

os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
HEADER = "Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass"
ROWS = ["Biscoe,50.4,15.3,200,5000", "Torgersen,39.1,18.7,181,3750", "Mars,40,18,190,3800", "Dream,abc,18,190,3800",
        "dream,46.5,17.9,192,3500", "biscoe,1,2,3", ",40,18,190,3800", "Dream,-4,18,190,3800"]
OUTPUT = ["Island", "CulmenLength", "CulmenDepth", "FlipperLength", "BodyMass", "predicted_species", "p_Adelie",
          "p_Gentoo", "p_Chinstrap", "reason"]
PENGUINS = [{"Island": "Biscoe", "CulmenLength": 50.4, "CulmenDepth": 15.3, "FlipperLength": 200.0, "BodyMass": 5000.0},
            {"Island": "Dream", "CulmenLength": 46.5, "CulmenDepth": 17.9, "FlipperLength": 192.0, "BodyMass": 3500.0},
            {"Island": "Torgersen", "CulmenLength": 39.1, "CulmenDepth": 18.7, "FlipperLength": 181.0,
             "BodyMass": 3750.0}]


def messy_csv(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text(HEADER + "\n" + "\n".join(ROWS) + "\n")
    return path


def scored(folder):
    return pd.read_parquet(folder).reset_index(drop=True)


def test_every_record_gets_a_species_or_the_reason_it_has_none(saved_model, tmp_path):
    from penguin_lab.predict import Predictor

    result = run_cli("score", "--model", str(saved_model), "--data", str(messy_csv(tmp_path)),
                     "--out", str(tmp_path / "scored"))
    assert result.returncode == 0, result.stderr
    assert "scored 8 penguins" in result.stdout and "5 could not be scored" in result.stdout
    frame = scored(tmp_path / "scored")
    assert list(frame.columns) == OUTPUT and len(frame) == 8
    by_island = dict(zip(frame["Island"].fillna("-"), frame["reason"]))
    assert by_island["Mars"] == "Island: unknown island 'Mars'; expected one of Biscoe, Dream, Torgersen"
    assert frame["reason"].tolist()[3] == "CulmenLength: 'abc' is not a number"
    assert frame["reason"].tolist()[5] == "too few fields"
    assert frame["reason"].tolist()[6] == "Island: missing"
    assert frame["reason"].tolist()[7] == "CulmenLength: '-4' is not a possible measurement"
    predictor = Predictor(saved_model)
    for i in (0, 1, 4):  # the records that follow every rule; 'dream' is Dream in any case
        row = frame.iloc[i]
        expected = predictor.predict(row["Island"], **{m: row[m] for m in OUTPUT[1:5]})
        assert row["predicted_species"] == expected["species"] and pd.isna(row["reason"])
        assert [row[f"p_{s}"] for s in predictor.species] == pytest.approx(list(expected["probabilities"].values()))
    assert frame.loc[frame["reason"].notna(), "predicted_species"].isna().all()


def test_drop_invalid_leaves_out_what_cannot_be_scored(saved_model, tmp_path):
    result = run_cli("score", "--model", str(saved_model), "--data", str(messy_csv(tmp_path)),
                     "--out", str(tmp_path / "scored"), "--drop-invalid")
    assert result.returncode == 0, result.stderr
    frame = scored(tmp_path / "scored")
    assert frame["Island"].tolist() == ["Biscoe", "Torgersen", "dream"] and frame["reason"].isna().all()


def test_nothing_left_to_write_is_still_a_parquet_folder_with_the_output_columns(saved_model, tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text(HEADER + "\nMars,40,18,190,3800\nDream,-4,18,190,3800\n")
    result = run_cli("score", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "scored"),
                     "--drop-invalid")
    assert result.returncode == 0, result.stderr
    assert "scored 2 penguins" in result.stdout and "2 could not be scored" in result.stdout
    frame = scored(tmp_path / "scored")
    assert list(frame.columns) == OUTPUT and frame.empty


def test_only_the_files_of_the_kept_task_attempts_stay(tmp_path):
    import pyarrow.parquet as pq
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    from penguin_lab.errors import LabError
    from penguin_lab.score import keep_only

    schema = StructType([StructField("Island", StringType()), StructField("p_Adelie", DoubleType())])
    attempts, staging, empty = (tmp_path / name for name in ("attempts", "staging", "empty"))
    for folder in (attempts, staging, empty):
        folder.mkdir()
    for name in ("part-00000-3.parquet", "part-00000-7.parquet", "part-00001-4.parquet"):
        (attempts / name).write_bytes(b"written")
    with pytest.raises(LabError, match="a worker wrote part-00002-9.parquet in a folder this machine does not see"):
        keep_only(attempts, staging, [{"file": "part-00002-9.parquet"}], schema)  # a worker's own disk, not shared
    assert not list(staging.iterdir())
    keep_only(attempts, staging, [{"file": "part-00000-7.parquet"}, {"file": "part-00001-4.parquet"}, {"file": None}],
              schema)
    assert sorted(p.name for p in staging.iterdir()) == ["_SUCCESS", "part-00000-7.parquet", "part-00001-4.parquet"]
    assert [p.name for p in attempts.iterdir()] == ["part-00000-3.parquet"]  # a lost attempt's, removed with it
    keep_only(attempts, empty, [{"file": None}], schema)  # no partition had a record
    table = pq.read_table(empty)
    assert table.num_rows == 0 and table.schema.names == ["Island", "p_Adelie"]


def test_the_time_score_reports_counts_from_the_command_s_start(spark, saved_model, tmp_path):
    # The command starts its clock before the JVM (cli.cmd_score): the seconds count from `started`, not the call.
    import time

    from penguin_lab.score import score

    result = score(spark, str(saved_model), messy_csv(tmp_path), tmp_path / "scored", started=time.perf_counter() - 60)
    assert 60 <= result["seconds"] < 600 and result["rows"] == len(ROWS)


def test_a_parquet_input_keeps_its_species_and_every_row(saved_model, tmp_path):
    made = run_cli("synth", "--rows", "5000", "--out", str(tmp_path / "synth"), "--format", "parquet")
    assert made.returncode == 0, made.stderr
    result = run_cli("score", "--model", str(saved_model), "--data", str(tmp_path / "synth"),
                     "--out", str(tmp_path / "scored"))
    assert result.returncode == 0, result.stderr
    frame = scored(tmp_path / "scored")
    assert len(frame) == 5000 and frame["reason"].isna().all() and "Species" in frame.columns
    assert set(frame["predicted_species"]) <= {"Adelie", "Gentoo", "Chinstrap"}
    assert (frame[OUTPUT[6:9]].idxmax(axis=1).str[2:] == frame["predicted_species"]).all()
    # Written from dictionaries, read as the plain text the output's schema declares.
    schema = pq.read_table(tmp_path / "scored").schema
    assert [schema.field(c).type for c in ("Island", "predicted_species", "reason")] == [pa.string()] * 3


@pytest.mark.parametrize("torch_workers", [True, False])
def test_scoring_s_python_workers_start_with_pytorch_imported(torch_workers):
    # What a task finds already imported in its forked worker: PyTorch, and what scoring uses beside it (pyarrow
    # imports pandas on its first array), for score's session only.
    modules = ("torch", "pandas", "pyarrow.parquet", "pyarrow.compute", "penguin_lab.score", "penguin_lab.predict")
    code = ("import sys\nfrom penguin_lab.spark import get_spark\n"
            f"spark = get_spark(torch_workers={torch_workers})\n"
            f"print(spark.sparkContext.parallelize([0], 1).map(lambda _: [m in sys.modules for m in {modules!r}])"
            ".collect())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PENGUIN_LAB_SPARK_MASTER": "local[1]"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str([[torch_workers] * len(modules)])


def test_an_output_folder_holding_other_files_is_refused_and_kept(saved_model, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_cli("score", "--model", str(saved_model), "--data", str(messy_csv(tmp_path)), "--out", str(out))
    assert_one_line_error(result, "notes.txt", "not scored Parquet")
    assert (out / "notes.txt").read_text() == "keep me"
    again = [run_cli("score", "--model", str(saved_model), "--data", str(messy_csv(tmp_path)),
                     "--out", str(tmp_path / "scored")) for _ in range(2)]  # an earlier output is replaced
    assert [r.returncode for r in again] == [0, 0] and len(scored(tmp_path / "scored")) == 8


def test_a_broken_model_is_one_line_before_any_task(tmp_path, model_dir):
    (model_dir / "model.safetensors").write_bytes(b"not weights")
    result = run_cli("score", "--model", str(model_dir), "--data", str(messy_csv(tmp_path)),
                     "--out", str(tmp_path / "scored"))
    assert_one_line_error(result, "model.safetensors")
    assert not (tmp_path / "scored").exists()


# --- the MLflow model in Spark --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged_model(tmp_path_factory, saved_model):
    """runs:/ID/model of the saved model, logged as MLflow logs it, in a SQLite store of its own."""
    import mlflow

    from penguin_lab.mlflow_models import log_penguin_model, quiet_mlflow, use_tracking_uri

    folder = tmp_path_factory.mktemp("store")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    quiet_mlflow()
    use_tracking_uri(store)
    experiment = mlflow.MlflowClient(store).create_experiment("scoring", (folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_penguin_model(saved_model)
    return store, f"runs:/{run.info.run_id}/model"


UDF_TYPE = "predicted_species string, p_Adelie double, p_Gentoo double, p_Chinstrap double, reason string"
SPARK_UDF_JOB = """
import json, sys
import mlflow
from pyspark.sql import functions as F
from penguin_lab.spark import get_spark

spark = get_spark()
uri, rows, result_type = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
predict = mlflow.pyfunc.spark_udf(spark, uri, result_type=result_type, env_manager="local")
frame = spark.createDataFrame(rows)
inputs = ["Island", "CulmenLength", "CulmenDepth", "FlipperLength", "BodyMass"]
out = frame.repartition(2).withColumn("p", predict(*[F.col(c) for c in inputs])).select("Island", "p.*")
print(json.dumps([r.asDict() for r in out.orderBy("Island").collect()]))
"""


def spark_udf_predictions(store, uri, env, tmp_path):
    result = subprocess.run([sys.executable, "-c", SPARK_UDF_JOB, uri, json.dumps(PENGUINS), UDF_TYPE],
                            capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, **env, "MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def pyfunc_predictions(store, uri):
    import mlflow

    from penguin_lab.mlflow_models import use_tracking_uri

    use_tracking_uri(store)
    predicted = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame(PENGUINS))
    rows = [{"Island": p["Island"], **{k: (None if pd.isna(v) else v) for k, v in row.items()}}
            for p, row in zip(PENGUINS, predicted.to_dict("records"))]
    return sorted(rows, key=lambda r: r["Island"])


def assert_same(found, expected):
    assert [r["Island"] for r in found] == [r["Island"] for r in expected]
    for a, b in zip(found, expected):
        assert a["predicted_species"] == b["predicted_species"] and a["reason"] is None
        assert [a[k] for k in ("p_Adelie", "p_Gentoo", "p_Chinstrap")] == pytest.approx(
            [b[k] for k in ("p_Adelie", "p_Gentoo", "p_Chinstrap")], abs=1e-6)


def test_spark_udf_scores_with_the_logged_model_on_local_spark(logged_model, tmp_path):
    store, uri = logged_model
    assert_same(spark_udf_predictions(store, uri, {"PENGUIN_LAB_SPARK_MASTER": "local[2]"}, tmp_path),
                pyfunc_predictions(store, uri))


@pytest.mark.cluster
def test_spark_udf_ships_the_model_to_a_standalone_cluster(logged_model, standalone_master, tmp_path):
    store, uri = logged_model  # on spark:// MLflow ships the model with addFile instead of a driver path
    assert_same(spark_udf_predictions(store, uri, cluster_env(standalone_master, tmp_path), tmp_path),
                pyfunc_predictions(store, uri))


@pytest.mark.cluster
def test_score_on_a_standalone_cluster_gives_what_local_spark_gives(saved_model, standalone_master, tmp_path):
    data = messy_csv(tmp_path)
    local = run_cli("score", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "local"))
    remote = run_cli("score", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "remote"),
                     env=cluster_env(standalone_master, tmp_path))
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    pd.testing.assert_frame_equal(scored(tmp_path / "local"), scored(tmp_path / "remote"))


def test_a_row_group_keeps_one_dictionary_when_its_batches_saw_the_islands_in_other_orders(tmp_path):
    """Each batch encodes its islands in the order they first appear; the row group written from two such
    batches still holds each island once, not every row's text."""
    import pyarrow.compute as pc

    from penguin_lab.score import write_row_group

    first = ["Biscoe", "Dream", "Torgersen"] * 20000
    second = ["Torgersen", "Biscoe", "Dream"] * 20000
    batches = [pa.RecordBatch.from_arrays([pc.dictionary_encode(pa.array(islands))], ["Island"])
               for islands in (first, second)]
    assert batches[0].column(0).dictionary != batches[1].column(0).dictionary
    write_row_group(None, tmp_path / "part.parquet", batches).close()
    chunk = pq.ParquetFile(tmp_path / "part.parquet").metadata.row_group(0).column(0)
    assert chunk.total_uncompressed_size < 120000 // 2  # 2 bits a row as indexes; written as text, over 10 bytes
    assert pq.read_table(tmp_path / "part.parquet").column("Island").to_pylist() == first + second
