"""Runs are MLflow runs, in a real SQLite store: params, per-epoch metrics, artifacts, the model, the registry."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import DATA, REPO, run_cli
from penguin_lab.mlflow_models import use_tracking_uri

# A store chosen by an earlier test of this process must not leak into these runs: each names its own.
TRACKED = {"PENGUIN_LAB_TRACKING": "on", "MLFLOW_TRACKING_URI": ""}
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
LAB_PENGUIN = {"Island": "Biscoe", "CulmenLength": 50.4, "CulmenDepth": 15.3, "FlipperLength": 200.0,
               "BodyMass": 5000.0}


def store_uri(runs: Path) -> str:
    return f"sqlite:///{runs / 'mlflow.db'}"


def client(runs: Path):
    import mlflow

    return mlflow.MlflowClient(store_uri(runs))


def only_run(runs: Path):
    experiment = client(runs).get_experiment_by_name("penguin-lab")
    found = client(runs).search_runs([experiment.experiment_id])
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("tracked") / "runs"
    result = run_cli("run", "--out", str(runs / "first"), "--epochs", "30", "--register", "penguin_classifier",
                     env=TRACKED)
    assert result.returncode == 0, result.stderr
    return runs, result


def test_the_run_logs_settings_data_and_versions(tracked_run):
    runs, _ = tracked_run
    run = only_run(runs)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    params = run.data.params
    assert params["epochs"] == "30" and params["batch_size"] == "20" and params["seed"] == "0"
    assert params["engine"] == "single" and params["world_size"] == "1" and params["data"] == str(DATA)
    tags = run.data.tags
    from importlib.metadata import version

    assert tags["penguin_lab.version"] == "1.0.0" and tags["mlflow.version"] == version("mlflow")
    assert tags["torch.version"] == version("torch") and tags["pyspark.version"] == version("pyspark")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode == 0:  # a checkout: the commit is the run's source
        assert tags["mlflow.source.git.commit"] == commit.stdout.strip()


def test_every_epoch_and_every_count_is_a_metric(tracked_run):
    runs, _ = tracked_run
    run = only_run(runs)
    metrics = json.loads((runs / "first" / "metrics.json").read_text())
    assert metrics["mlflow"]["run_id"] == run.info.run_id
    for name in ("train_loss", "val_loss", "val_accuracy"):
        steps = client(runs).get_metric_history(run.info.run_id, name)
        assert [m.step for m in steps] == list(range(1, 31))
        assert [m.value for m in steps] == pytest.approx(metrics["history"][name])
    final = run.data.metrics
    assert final["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    for count in ("input_rows", "incomplete_rows", "duplicate_rows", "train_rows", "test_rows", "overlap_rows"):
        assert final[count] == metrics[count]
    assert final["overlap_rows"] == 0 and final["test_rows"] == 102


def test_plots_files_and_the_model_are_artifacts_without_pickle(tracked_run, tmp_path):
    import mlflow

    runs, _ = tracked_run
    run = only_run(runs)
    names = {a.path for a in client(runs).list_artifacts(run.info.run_id)}
    assert {"loss.png", "accuracy.png", "confusion.png", "metrics.json", "weights.txt"} <= names
    for plot in ("accuracy.png", "confusion.png"):
        assert (runs / "first" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    use_tracking_uri(store_uri(runs))
    model = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path)))
    files = [p for p in model.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".joblib")]
    for path in files:  # no pickle by any name: protocol 2+ pickles start with 0x80 and the protocol number
        head = path.read_bytes()[:2]
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), path
    described = (model / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in described  # built by running code, not unpickled
    assert not (model / "python_model.pkl").exists() and (model / "mlflow_pyfunc.py").is_file()


def test_the_logged_model_predicts_a_gentoo_with_a_typed_signature(tracked_run):
    import mlflow
    import pandas as pd

    runs, _ = tracked_run
    run = only_run(runs)
    use_tracking_uri(store_uri(runs))
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    inputs = {c.name: str(c.type) for c in model.metadata.get_input_schema().inputs}
    assert inputs == {"Island": "DataType.string", **{m: "DataType.double" for m in list(LAB_PENGUIN)[1:]}}
    outputs = [c.name for c in model.metadata.get_output_schema().inputs]
    assert outputs == ["predicted_species", "p_Adelie", "p_Gentoo", "p_Chinstrap", "reason"]
    predicted = model.predict(pd.DataFrame([LAB_PENGUIN]))
    assert predicted["predicted_species"].tolist() == ["Gentoo"]
    assert predicted[["p_Adelie", "p_Gentoo", "p_Chinstrap"]].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_the_model_is_registered_and_predict_reads_runs_and_models_uris(tracked_run):
    runs, result = tracked_run
    run = only_run(runs)
    versions = client(runs).search_model_versions("name='penguin_classifier'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    assert "registered as penguin_classifier version 1" in result.stdout
    penguin = ["--island", "Biscoe", "--culmen-length", "50.4", "--culmen-depth", "15.3", "--flipper-length", "200",
               "--body-mass", "5000", "--json"]
    from_folder = run_cli("predict", "--model", str(runs / "first" / "model"), *penguin)
    for uri in (f"runs:/{run.info.run_id}/model", "models:/penguin_classifier/1"):
        by_uri = run_cli("predict", "--model", uri, *penguin, env={"MLFLOW_TRACKING_URI": store_uri(runs)})
        assert by_uri.returncode == 0, by_uri.stderr
        assert json.loads(by_uri.stdout) == json.loads(from_folder.stdout)
        assert json.loads(by_uri.stdout)["species"] == "Gentoo"
    missing = run_cli("predict", "--model", "models:/no_such_model/1", *penguin,
                      env={"MLFLOW_TRACKING_URI": store_uri(runs)})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no_such_model" in missing.stderr


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "sqlite:///{tmp}/a-file/mlflow.db", "nosuch://store"])
def test_an_unreachable_or_wrong_store_is_one_warning_and_the_results_stay_whole(tmp_path, uri):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "a-file").write_text("not a folder")
    uri = uri.format(port=port, tmp=tmp_path)
    args = ["run", "--epochs", "5"]
    broken = run_cli(*args, "--out", str(tmp_path / "tracked"), env={**TRACKED, "MLFLOW_TRACKING_URI": uri})
    plain = run_cli(*args, "--out", str(tmp_path / "plain"), "--no-tracking")
    assert broken.returncode == 0 and plain.returncode == 0, broken.stderr
    warnings = [line for line in broken.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("penguin-lab: warning: MLflow tracking at " + uri)
    assert plain.stderr == ""
    tracked, untracked = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("tracked", "plain"))
    assert "mlflow" not in tracked
    for key in ("test_accuracy", "history", "train_rows", "test_rows", "overlap_rows"):
        assert tracked[key] == untracked[key]
    same = [(tmp_path / n / "model" / "model.safetensors").read_bytes() for n in ("tracked", "plain")]
    assert same[0] == same[1]
    assert sorted(p.name for p in (tmp_path / "tracked").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir())


def test_a_failed_run_is_marked_failed_with_its_one_line_reason(tmp_path):
    runs = tmp_path / "runs"
    result = run_cli("run", "--data", str(tmp_path / "missing.csv"), "--out", str(runs / "bad"), env=TRACKED)
    assert result.returncode == 2
    run = only_run(runs)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == f"{tmp_path}/missing.csv: no such file; expected a CSV file"
    assert not (runs / "bad").exists()


def test_no_tracking_writes_no_store(tmp_path):
    result = run_cli("run", "--epochs", "2", "--out", str(tmp_path / "runs" / "r"), "--no-tracking", env=TRACKED)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]
    assert "MLflow run" not in result.stdout


def test_a_distributed_run_is_logged_once_from_the_driver(tmp_path):
    runs = tmp_path / "runs"
    result = run_cli("distributed", "--engine", "torch", "--np", "2", "--epochs", "4", "--out", str(runs / "ddp"),
                     env=TRACKED)
    assert result.returncode == 0, result.stderr
    run = only_run(runs)
    assert run.data.params["engine"] == "torch" and run.data.params["world_size"] == "2"
    assert [m.step for m in client(runs).get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3, 4]
    names = {a.path for a in client(runs).list_artifacts(run.info.run_id)}
    assert {"loss.png", "accuracy.png", "confusion.png", "metrics.json"} <= names
    models = client(runs).search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]


def test_the_mlflow_ui_serves_the_runs_over_http(tracked_run, tmp_path):
    runs, _ = tracked_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri(runs),
                           "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                          stderr=open(tmp_path / "ui.log", "w"))
    try:
        deadline, found = time.monotonic() + 90, None
        while time.monotonic() < deadline and found is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
                                                 f"?experiment_name=penguin-lab")
                with urllib.request.urlopen(request, timeout=5) as response:
                    found = json.loads(response.read())
            except OSError:
                assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
                time.sleep(0.5)
        assert found is not None, "the MLflow UI did not answer in 90 s"
        body = json.dumps({"experiment_ids": [found["experiment"]["experiment_id"]]}).encode()
        search = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                        headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(search, timeout=10) as response:
            listed = json.loads(response.read())["runs"]
        assert [r["info"]["run_id"] for r in listed] == [only_run(runs).info.run_id]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
