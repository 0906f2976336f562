"""The notebooks as a Databricks driver runs them (tests/databricks_driver.py): `spark`, `dbutils` and `display`
given, the parameters in widgets, the notebook's folder as the working directory, DATABRICKS_RUNTIME_VERSION set.

`make test-runtimes` runs this file in a venv per Databricks runtime, with that runtime's libraries; there
PENGUIN_LAB_RUNTIME is the runtime's version. The plain `python notebooks/...` runs are in test_notebooks.py."""

import importlib.metadata as metadata
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from databricks_driver import DBUtils, NotebookExit, run_notebook

RUNTIME = os.environ.get("PENGUIN_LAB_RUNTIME", "17.3")
NOTEBOOKS = REPO / "notebooks"
WIDGETS = {"epochs": "5", "seed": "3", "tracking": "true"}


def lab_env(folder):
    """MLflow goes to a SQLite store in `folder`: MLFLOW_TRACKING_URI wins over Databricks' own tracking server.
    The local run's variables are set to other values: on Databricks the widgets decide."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PENGUIN_LAB_EPOCHS": "7",
            "PENGUIN_LAB_OUT": str(folder / "not-here"), "PENGUIN_LAB_TRACKING": "off"}


def assert_ran_to_the_end(run):
    assert run.returncode == 0 and run.report["error"] is None, run.stderr[-3000:]
    assert run.report["exit"] is None and "penguin-lab: warning" not in run.stderr, run.stderr[-3000:]
    assert [c["cell"] for c in run.report["ran"]] == run.report["code_cells"]


def drive(name, folder, widgets=None, runtime=RUNTIME):
    run = run_notebook(NOTEBOOKS / name, {"output_dir": str(folder / "penguin-lab"), **WIDGETS, **(widgets or {})},
                       runtime, lab_env(folder))
    return run


# --- the driver itself ---------------------------------------------------------------------------------------

def test_the_driver_runs_cells_in_order_in_one_namespace_as_databricks_does(tmp_path):
    folder = tmp_path / "lab" / "notebooks"
    folder.mkdir(parents=True)
    tqdm_version = metadata.version("tqdm")
    (folder / "probe.py").write_text(f'''# Databricks notebook source
# MAGIC %md
# MAGIC # A probe: this cell is prose

# COMMAND ----------

# MAGIC %pip install -q tqdm=={tqdm_version}

# COMMAND ----------

import json, os
dbutils.widgets.text("epochs", "100", "Epochs")
dbutils.widgets.dropdown("engine", "torch", ["torch", "horovod"], "Engine")
seen = {{"widgets": dbutils.widgets.getAll(), "has_file": "__file__" in globals(), "cwd": os.getcwd(),
        "runtime": os.environ["DATABRICKS_RUNTIME_VERSION"], "cores": sc.defaultParallelism,
        "path": dbutils.notebook.entry_point.getDbutils().notebook().getContext().notebookPath().get()}}

# COMMAND ----------

dbutils.fs.mkdirs("file:{tmp_path}/out/a")
dbutils.fs.put("{tmp_path}/out/a/x.txt", "penguins")
dbutils.fs.cp("{tmp_path}/out/a", "{tmp_path}/out/b", recurse=True)
seen["listed"] = [f.name for f in dbutils.fs.ls("{tmp_path}/out")]
seen["copied"] = dbutils.fs.head("{tmp_path}/out/b/x.txt")
display(spark.range(3))
dbutils.notebook.exit(json.dumps(seen))

# COMMAND ----------

raise RuntimeError("a cell after dbutils.notebook.exit ran")
''')
    run = run_notebook(folder / "probe.py", {"epochs": "5"}, runtime="15.4")
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.report["exit"])
    assert seen["widgets"] == {"epochs": "5", "engine": "torch"}  # given values win over defaults
    assert seen["has_file"] is False and seen["cwd"] == str(folder) and seen["runtime"] == "15.4"
    assert seen["path"] == "/Users/learner@example.com/lab/notebooks/probe" and seen["cores"] == 2
    assert seen["listed"] == ["a/", "b/"] and seen["copied"] == "penguins"
    assert run.report["skipped_markdown"] == 1 and run.report["pip"] == [f"%pip install -q tqdm=={tqdm_version}"]
    assert [c["cell"] for c in run.report["ran"]] == [2, 3, 4]  # the cell after exit did not run
    assert run.displayed("DataFrame") == [{"kind": "DataFrame", "columns": ["id"], "rows": 3}]
    assert run.report["widgets"]["engine"]["choices"] == ["torch", "horovod"]


def test_the_driver_stops_at_the_first_failing_cell(tmp_path):
    (tmp_path / "broken.py").write_text('# Databricks notebook source\nstep = 1\n\n# COMMAND ----------\n\n'
                                        'dbutils.widgets.get("data_path")\n\n# COMMAND ----------\n\nstep = 3\n')
    run = run_notebook(tmp_path / "broken.py")
    assert run.returncode == 1 and [c["cell"] for c in run.report["ran"]] == [1]
    assert run.report["error"] == {"cell": 2, "type": "ValueError",
                                   "message": "InputWidgetNotDefined: no input widget named data_path is defined"}
    assert "<broken.py cell 2>" in run.stderr


# --- notebook.py on Databricks --------------------------------------------------------------------------------

def test_parameters_come_from_widgets_on_databricks(monkeypatch, tmp_path):
    from penguin_lab import notebook
    from penguin_lab.errors import LabError

    monkeypatch.setenv("PENGUIN_LAB_EPOCHS", "7")  # a local setting: ignored where there are widgets
    dbutils = DBUtils({"epochs": " 12 ", "output_dir": "dbfs:/tmp/mine", "drop_invalid": "yes",
                       "register_model": "main.default.penguins"}, "/Users/x/lab/notebooks/02")
    params = notebook.parameters(dbutils)
    assert set(dbutils.widgets.defined) == set(notebook.PARAMETERS)
    assert params["epochs"] == 12 and params["output_dir"] == "/dbfs/tmp/mine" and params["drop_invalid"] is True
    assert params["register_model"] == "main.default.penguins" and params["tracking"] is True
    assert params["model"] == "" and notebook.parameters(DBUtils({}, ""))["register_model"] is None
    for name, value, message in [("epochs", "ten", "parameter epochs: 'ten' is not a whole number"),
                                 ("seed", "-1", "parameter seed: -1 is too small"),
                                 ("tracking", "maybe", "parameter tracking: 'maybe' is not true or false")]:
        with pytest.raises(LabError, match=message):
            notebook.parameters(DBUtils({name: value}, "/Users/x/lab/notebooks/02"))
    # The results' default: DBFS where the cluster has it, else the driver's own disk.
    assert notebook.databricks_results(str(tmp_path)) == "/dbfs/tmp/penguin-lab"
    assert notebook.databricks_results(str(tmp_path / "no-dbfs")).endswith("/penguin-lab")
    assert os.path.isdir(os.path.dirname(notebook.databricks_results(str(tmp_path / "no-dbfs"))))
    assert DBUtils({}, "").widgets.given == {} and notebook.parameters(DBUtils({}, ""))["output_dir"] == \
        notebook.databricks_results()


def test_a_missing_library_stops_the_notebook_in_one_line(monkeypatch):
    from penguin_lab import notebook

    notebook.require(None, "json")  # present: nothing happens
    with pytest.raises(SystemExit, match=r"^penguin-lab: this notebook needs no_such_library, which Python 3\.\S+ on "
                                         r"this machine lacks; expected `make install`$"):
        notebook.require(None, "no_such_library")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    with pytest.raises(NotebookExit, match=r"^this notebook needs no_such_library, which Databricks Runtime 17\.3 "
                                           r"lacks; expected a Databricks Runtime ML, 15\.4 LTS ML or newer$"):
        notebook.require(DBUtils({}, ""), "no_such_library")


def test_figures_go_to_the_notebooks_display(monkeypatch):
    from matplotlib.figure import Figure

    from penguin_lab import notebook

    figure, shown = Figure(), []
    exec("notebook.show_figure(figure)", {"notebook": notebook, "figure": figure, "display": shown.append})
    assert shown == [figure]
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    notebook.show_figure(figure)  # a plain `python` run: nothing to show it on, and no error
    assert shown == [figure]


# --- the lab's notebooks --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_node_lab(tmp_path_factory):
    """Notebooks 1, 2, 3 and 6 in order on one results folder; notebook 2 registers its model, which 6 scores."""
    folder = tmp_path_factory.mktemp("databricks")
    runs = {"01": drive("01_prepare_data.py", folder),
            "02": drive("02_train_evaluate.py", folder, {"register_model": "notebook_penguins"})}
    runs["03"] = drive("03_save_and_predict.py", folder)
    runs["06"] = drive("06_batch_scoring.py", folder, {"model": "models:/notebook_penguins/1"})
    return folder, runs


def test_every_notebook_reads_its_parameters_from_widgets(single_node_lab):
    from penguin_lab.notebook import PARAMETERS

    _, runs = single_node_lab
    for name, run in runs.items():
        assert_ran_to_the_end(run)
        assert set(run.report["widgets"]) == set(PARAMETERS), name
        assert run.report["widget_values"]["epochs"] == "5", name


def test_notebook_1_shows_its_tables_with_display(single_node_lab):
    folder, runs = single_node_lab
    tables = runs["01"].displayed("DataFrame")
    metrics = json.loads((folder / "penguin-lab" / "metrics.json").read_text())
    assert tables[0]["rows"] == 344 and "Island" in tables[0]["columns"]
    assert tables[1]["rows"] == metrics["train_rows"] and "FlipperScaled" in tables[1]["columns"]


def test_notebook_2_trains_like_the_command_line_and_is_an_mlflow_run(single_node_lab, tmp_path):
    import mlflow

    folder, runs = single_node_lab
    titles = [item["titles"][0].lower() for item in runs["02"].displayed("Figure")]
    assert any("loss" in t for t in titles) and any("accuracy" in t for t in titles), titles
    assert len(titles) == 3 and "your network: test accuracy" in runs["02"].stdout  # the learner's own network
    assert "registered as notebook_penguins version 1" in runs["02"].stdout
    metrics = json.loads((folder / "penguin-lab" / "metrics.json").read_text())
    assert metrics["epochs"] == 5 and metrics["overlap_rows"] == 0

    cli = run_cli("run", "--epochs", "5", "--seed", "3", "--out", str(tmp_path / "cli"), "--no-tracking")
    assert cli.returncode == 0, cli.stderr
    weights = "model/model.safetensors"
    assert (folder / "penguin-lab" / weights).read_bytes() == (tmp_path / "cli" / weights).read_bytes()

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("penguin-lab").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "5"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4, 5]
    assert metrics["mlflow"]["run_id"] == run.info.run_id


def test_notebooks_3_and_6_predict_and_score_with_the_saved_and_registered_model(single_node_lab):
    _, runs = single_node_lab
    assert "Prediction:" in runs["03"].stdout
    assert "scored 344 penguins" in runs["06"].stdout and "2 could not be scored" in runs["06"].stdout
    columns = [table["columns"] for table in runs["06"].displayed("DataFrame")]
    assert ["predicted_species", "count"] in columns
    # MLflow's spark_udf scored the registered model on this runtime's MLflow and Spark.
    assert ["Island", "CulmenLength", "CulmenDepth", "FlipperLength", "BodyMass", "predicted_species"] in columns


def test_notebook_4_trains_with_horovod_where_it_is_installed_and_says_in_one_line_where_not(tmp_path):
    run = drive("04_distributed_horovod.py", tmp_path)
    if importlib.util.find_spec("horovod") is not None:
        assert_ran_to_the_end(run)
        assert "Prediction:" in run.stdout and (tmp_path / "penguin-lab" / "horovod" / "model").is_dir()
        return
    if os.environ.get("PENGUIN_LAB_RUNTIME_HOROVOD") == "1":  # scripts/test_runtimes.sh: this runtime has it
        pytest.fail(f"Horovod is not installed; on {RUNTIME} LTS ML it is (scripts/build_horovod.sh builds it)")
    assert run.returncode == 0 and run.report["error"] is None, run.stderr[-3000:]
    assert run.report["exit"] == (
        f"notebook 4 needs Databricks Runtime 15.4 LTS ML or older, where Horovod and sparkdl's HorovodRunner are "
        f"installed; this cluster runs Databricks Runtime {RUNTIME}, without them: notebook 5 trains the same model "
        f"with TorchDistributor here")
    assert len(run.report["ran"]) == 1 and "Traceback" not in run.stderr  # stopped in its first cell
    assert not (tmp_path / "penguin-lab").exists()
    # The same notebook run with plain `python` here: one line on stderr, exit status 1.
    local = subprocess.run([sys.executable, str(NOTEBOOKS / "04_distributed_horovod.py")], capture_output=True,
                           text=True, cwd=tmp_path, env={**os.environ, "PENGUIN_LAB_OUT": str(tmp_path / "local")},
                           timeout=300)
    assert local.returncode == 1 and local.stderr.strip() == (
        "penguin-lab: notebook 4 needs Horovod, which is not installed: `make horovod` builds it once for this "
        "PyTorch; notebook 5 trains the same model with TorchDistributor without it")


def test_notebook_5_trains_with_torch_distributor_on_the_driver_and_in_barrier_tasks(tmp_path):
    import mlflow

    run = drive("05_distributed_torch_distributor.py", tmp_path)
    assert_ran_to_the_end(run)
    assert "same weights as local mode: True" in run.stdout and "Prediction:" in run.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("penguin-lab").experiment_id])
    assert logged.data.params["engine"] == "torch" and logged.info.status == "FINISHED"
