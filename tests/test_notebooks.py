"""The notebooks: Databricks source format, valid Python, and they run top to bottom locally with the
same results as `penguin-lab run`."""

import ast
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, run_cli

NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.py"))
SINGLE_NODE = [nb for nb in NOTEBOOKS if nb.name[:2] in ("01", "02", "03", "06")]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_databricks_source_and_valid_python(notebook):
    text = notebook.read_text()
    assert text.startswith("# Databricks notebook source\n")
    assert "\n# COMMAND ----------\n" in text
    assert "# MAGIC %md" in text
    assert not [line for line in text.splitlines() if line.lstrip().startswith("%")], "bare magic line"
    ast.parse(text)


def test_single_node_notebooks_run_and_match_the_command_line(tmp_path):
    assert [nb.name for nb in SINGLE_NODE] == ["01_prepare_data.py", "02_train_evaluate.py", "03_save_and_predict.py",
                                                "06_batch_scoring.py"]
    env = {**os.environ, "PENGUIN_LAB_OUT": str(tmp_path / "notebooks"), "PENGUIN_LAB_EPOCHS": "5",
           "PENGUIN_LAB_SEED": "3", "MPLBACKEND": "Agg"}
    outputs = {}
    for notebook in SINGLE_NODE:
        result = subprocess.run([sys.executable, str(notebook)], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=600)
        assert result.returncode == 0, f"{notebook.name}:\n{result.stderr[-3000:]}"
        outputs[notebook.name] = result.stdout
    prepare_output = outputs["01_prepare_data.py"]
    assert "overlap_rows: 0" in prepare_output
    # The reading step: its Spark code, then the checked records of the shipped file, shown as a table.
    assert "def lines_of" in prepare_output and "spark.read.text" in prepare_output
    assert "344 data rows read from" in prepare_output
    assert "|file|block|pos|kind|" in prepare_output.replace(" ", "")
    assert "|0|0|1|data|false|Torgersen|39.1|18.7|181.0|3750.0|0.0|NULL|" in prepare_output.replace(" ", "")
    for step in ("def unique_complete", "def encode", "def spark_split"):
        assert step in prepare_output
    assert "|Row|IslandIdx|CulmenLength|CulmenDepth|FlipperScaled|MassScaled|Species|" in prepare_output.replace(" ", "")
    assert "class PenguinNet" in outputs["02_train_evaluate.py"]
    assert "def train_one_epoch" in outputs["02_train_evaluate.py"]
    assert "Prediction:" in outputs["03_save_and_predict.py"]
    scoring = outputs["06_batch_scoring.py"]
    assert "def score_columns" in scoring and "def scored_batches" in scoring
    assert "scored 344 penguins" in scoring and "2 could not be scored" in scoring
    assert "|predicted_species|count|" in scoring.replace(" ", "")
    assert len(pd.read_parquet(tmp_path / "notebooks-scored")) == 344

    cli = run_cli("run", "--epochs", "5", "--seed", "3", "--out", str(tmp_path / "cli"))
    assert cli.returncode == 0, cli.stderr

    def comparable(folder):
        metrics = json.loads((folder / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if not k.endswith("seconds") and k != "data"}

    assert comparable(tmp_path / "notebooks") == comparable(tmp_path / "cli")
    weights = "model/model.safetensors"
    assert (tmp_path / "notebooks" / weights).read_bytes() == (tmp_path / "cli" / weights).read_bytes()


def test_notebook_2_is_an_mlflow_run_logged_as_it_trains(tmp_path):
    import mlflow

    env = {**os.environ, "PENGUIN_LAB_OUT": str(tmp_path / "runs" / "nb"), "PENGUIN_LAB_EPOCHS": "3",
           "PENGUIN_LAB_TRACKING": "true", "PENGUIN_LAB_REGISTER": "notebook_penguins", "MPLBACKEND": "Agg",
           "MLFLOW_TRACKING_URI": ""}
    result = subprocess.run([sys.executable, str(REPO / "notebooks" / "02_train_evaluate.py")], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered as notebook_penguins version 1" in result.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("penguin-lab").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
    assert json.loads((tmp_path / "runs" / "nb" / "metrics.json").read_text())["mlflow"]["run_id"] == run.info.run_id


def test_notebook_parameters_are_checked(monkeypatch):
    """A bad widget value is one clear error, not a ValueError traceback from int()."""
    from penguin_lab import notebook
    from penguin_lab.errors import LabError

    monkeypatch.setenv("PENGUIN_LAB_DROP_INVALID", "TRUE")
    assert notebook.parameters()["drop_invalid"] is True
    for name, value, message in [("PENGUIN_LAB_EPOCHS", "ten", "parameter epochs: 'ten' is not a whole number"),
                                 ("PENGUIN_LAB_EPOCHS", "0", "parameter epochs: 0 is too small"),
                                 ("PENGUIN_LAB_SEED", "-1", "parameter seed: -1 is too small"),
                                 ("PENGUIN_LAB_DROP_INVALID", "maybe", "parameter drop_invalid: 'maybe'")]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(LabError, match=message):
                notebook.parameters()


def test_display_uses_the_notebooks_display_and_shows_the_frame_otherwise(spark, capsys):
    """Databricks puts `display` in a notebook's globals; without one, the first rows are printed."""
    from penguin_lab import notebook

    frame = spark.createDataFrame([("Biscoe", 50.4)], "Island string, CulmenLength double")
    shown = []
    exec("notebook.display(frame)", {"notebook": notebook, "frame": frame, "display": shown.append})
    assert shown == [frame]
    notebook.display(frame, display_function=shown.append)
    assert shown == [frame, frame]
    assert capsys.readouterr().out == ""

    exec("notebook.display(frame)", {"notebook": notebook, "frame": frame})
    printed = capsys.readouterr().out.replace(" ", "")
    assert "|Island|CulmenLength|" in printed and "|Biscoe|50.4|" in printed
