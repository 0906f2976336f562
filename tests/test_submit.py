"""`penguin-lab submit` against the local HTTP workspace of fake_workspace.py, with the SDK unmodified."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from fake_workspace import LATEST_LTS_ML_CPU, clean_env, fake  # noqa: F401  (fixtures)

from penguin_lab import submit as submitting
from penguin_lab.errors import LabError
from penguin_lab.jobrun import JOB_RUN_TAG, RunFailed
from penguin_lab.wheel import build_wheel

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_JSON = REPO_ROOT / "databricks" / "cluster.json"
SUBMIT = "/api/2.2/jobs/runs/submit"
TRAINED = ("test accuracy 0.9804 on 102 held-out penguins (240 training rows, 0 overlapping)\n"
           "rows read 344; not trained on: 2 incomplete, 0 invalid, 0 duplicate\n")


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    return build_wheel(REPO_ROOT, tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def run_submit(built_wheel):
    """submit() with the module's wheel (the command line tests below build their own)."""
    def run(fake, options=submitting.SubmitOptions(), **keywords):
        said = []
        keywords.setdefault("wait", True)
        result = submitting.submit(host=fake.url, options=options, poll_seconds=0.01, settings_path=CLUSTER_JSON,
                                   source_dir=REPO_ROOT, wheel=built_wheel, log=lambda line: None, say=said.append,
                                   **keywords)
        return result, said
    return run


def cli(*args, env=None, **popen):
    """`penguin-lab submit ARGS` in a fresh process, from the repository."""
    return subprocess.Popen([sys.executable, "-m", "penguin_lab.cli", "submit", *args], cwd=REPO_ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def expected_cluster(user: str, runtime: str) -> dict:
    cluster = json.loads(CLUSTER_JSON.read_text())["cluster"]
    for key in submitting.NOT_FOR_JOB_CLUSTERS:
        cluster.pop(key)
    return {**cluster, "spark_version": runtime, "single_user_name": user}


# ============================================================================================
# The requests
# ============================================================================================


def test_the_wheel_task_runs_penguin_lab_run_from_the_uploaded_wheel_on_cluster_json_s_cluster(fake, run_submit):
    result, _ = run_submit(fake, submitting.SubmitOptions(epochs=7, seed=3), wait=False)

    [sent] = fake.calls("POST", SUBMIT)
    assert sent.body == result.requests[-1].body  # what --dry-run shows is what is sent
    [task] = sent.body["tasks"]
    assert task["new_cluster"] == expected_cluster(fake.user, LATEST_LTS_ML_CPU)
    assert task["python_wheel_task"] == {"package_name": "penguin_lab", "entry_point": "penguin-lab-job",
                                         "parameters": ["run", "--epochs", "7", "--seed", "3"]}
    [library] = task["libraries"]
    [upload] = fake.calls("POST", "/api/2.0/workspace/import")
    wheel_bytes = base64.b64decode(upload.body["content"])
    digest = hashlib.sha256(wheel_bytes).hexdigest()
    assert upload.body["path"] == f"/Users/{fake.user}/penguin-lab/wheels/1.0.0-{digest[:12]}/penguin_lab-1.0.0-py3-none-any.whl"
    assert library == {"whl": "/Workspace" + upload.body["path"]}
    assert fake.objects[upload.body["path"]]["object_type"] == "FILE"
    assert sent.body["run_name"] == "penguin-lab 1.0.0 run --epochs 7"


def test_distributed_options_become_the_distributed_command(fake, run_submit):
    run_submit(fake, submitting.SubmitOptions(engine="horovod", np=3, epochs=2), wait=False)

    [task] = fake.calls("POST", SUBMIT)[0].body["tasks"]
    assert task["task_key"] == "distributed"
    assert task["python_wheel_task"]["parameters"] == ["distributed", "--engine", "horovod", "--np", "3",
                                                       "--epochs", "2", "--seed", "0"]
    assert task["new_cluster"]["spark_version"] == "15.4.x-cpu-ml-scala2.12"  # the last runtime with Horovod


def test_the_notebooks_run_as_a_chain_with_the_options_as_widget_values(fake, run_submit):
    run_submit(fake, submitting.SubmitOptions(notebooks=True, epochs=12, seed=5), wait=False)

    tasks = fake.calls("POST", SUBMIT)[0].body["tasks"]
    chain = ["01_prepare_data", "02_train_evaluate", "03_save_and_predict", "05_distributed_torch_distributor"]
    assert [t["task_key"] for t in tasks] == chain
    assert [t.get("depends_on") for t in tasks] == [None] + [[{"task_key": key}] for key in chain[:-1]]
    folder = f"/Users/{fake.user}/penguin-lab"
    for task in tasks:
        notebook = task["notebook_task"]
        assert notebook["notebook_path"] == f"{folder}/notebooks/{task['task_key']}"
        assert fake.objects[notebook["notebook_path"]]["object_type"] == "NOTEBOOK"  # uploaded first
        assert notebook["base_parameters"] == {"epochs": "12", "seed": "5"}
        assert task["new_cluster"] == expected_cluster(fake.user, LATEST_LTS_ML_CPU)
    assert f"{folder}/penguin_lab/cli.py" in fake.objects  # the package beside the notebooks, as `up` puts it


def test_horovod_notebooks_end_with_the_horovod_notebook(fake, run_submit):
    run_submit(fake, submitting.SubmitOptions(notebooks=True, engine="horovod"), wait=False)
    assert fake.calls("POST", SUBMIT)[0].body["tasks"][-1]["task_key"] == "04_distributed_horovod"


def test_with_a_volume_the_wheel_goes_to_the_volume_through_the_files_api(fake, run_submit):
    run_submit(fake, submitting.SubmitOptions(volume="/Volumes/main/default/lab"), wait=False)

    [(path, content)] = fake.volume_files.items()
    digest = hashlib.sha256(content).hexdigest()
    assert path == f"/Volumes/main/default/lab/penguin-lab/wheels/1.0.0-{digest[:12]}/penguin_lab-1.0.0-py3-none-any.whl"
    assert fake.calls("POST", SUBMIT)[0].body["tasks"][0]["libraries"] == [{"whl": path}]
    assert fake.calls("POST", "/api/2.0/workspace/import") == []


@pytest.mark.parametrize("options, complaint", [
    (submitting.SubmitOptions(np=2), "--np needs --engine"),
    (submitting.SubmitOptions(notebooks=True, engine="torch", np=2), "--np is not a notebook setting"),
    (submitting.SubmitOptions(volume="/Volumes/main"), "--volume must be a Unity Catalog volume path"),
])
def test_options_that_do_not_fit_are_refused_before_anything_is_sent(fake, run_submit, options, complaint):
    with pytest.raises(LabError, match=complaint):
        run_submit(fake, options)
    assert fake.calls() == []


def test_the_upload_path_names_the_version_and_the_code(tmp_path, built_wheel):
    source = tmp_path / "src"
    for relative in ("pyproject.toml", "penguin_lab", "data/penguins.csv"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO_ROOT / relative).is_dir() else shutil.copy2
        copy(REPO_ROOT / relative, source / relative)
    same = build_wheel(source, tmp_path / "same")
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    newer = build_wheel(source, tmp_path / "newer")

    assert same.sha256 == built_wheel.sha256  # the same code gives the same bytes, so the same path
    assert newer.folder_name.startswith("1.0.1-") and newer.path.name == "penguin_lab-1.0.1-py3-none-any.whl"
    assert newer.folder_name != built_wheel.folder_name


# ============================================================================================
# Watching the run
# ============================================================================================


def test_the_states_are_shown_in_order_then_the_accuracy_from_the_task_output(fake, run_submit):
    fake.task_logs["run"] = TRAINED

    result, said = run_submit(fake)

    run_id = result.run_id
    assert said == [
        f"run {run_id}: {fake.runs[run_id]['run_page_url']}",
        "state: PENDING (Waiting for cluster)",
        "state: RUNNING",
        "state: TERMINATED SUCCESS",
        "test accuracy 0.9804 (run, from the task's output)",
    ]
    assert fake.run_states(run_id) == ["PENDING", "RUNNING", "TERMINATED"]
    assert [(r.test_accuracy, r.source) for r in result.outcome.results] == [(0.9804, "the task's output")]


def test_the_accuracy_comes_from_mlflow_when_the_run_was_tracked_in_the_workspace(fake, run_submit):
    mlflow_run = fake.add_mlflow_run("1234", {"test_accuracy": 0.9706, "test_rows": 102})
    fake.task_logs["run"] = TRAINED + f"MLflow run {mlflow_run} in databricks\n"

    result, said = run_submit(fake)

    assert said[-1] == f"test accuracy 0.9706 (run, from MLflow run {mlflow_run})"
    assert fake.calls("GET", "/api/2.0/mlflow/runs/get")[-1].query == {"run_id": mlflow_run}


def test_a_notebook_chain_reports_the_accuracy_of_its_mlflow_runs(fake, run_submit):
    fake.notebook_metrics = {"02_train_evaluate": {"test_accuracy": 0.99}, "05_distributed_torch_distributor": {}}

    result, said = run_submit(fake, submitting.SubmitOptions(notebooks=True))

    [search, _] = fake.calls("POST", "/api/2.0/mlflow/runs/search")
    task_run = next(t["run_id"] for t in fake.runs[result.run_id]["tasks"] if t["task_key"] == "02_train_evaluate")
    assert search.body["filter"] == f"tags.`{JOB_RUN_TAG}` = '{task_run}'"
    assert "  task 01_prepare_data: RUNNING" in said
    assert said[-2].startswith("test accuracy 0.9900 (02_train_evaluate, from MLflow run ")
    assert said[-1] == "05_distributed_torch_distributor: no test accuracy found (no MLflow run and none in its output)"


def test_a_notebook_that_stops_early_says_why_instead_of_an_accuracy(fake, run_submit):
    fake.task_logs["04_distributed_horovod"] = "notebook 4 needs Horovod, which this runtime does not ship"

    _, said = run_submit(fake, submitting.SubmitOptions(notebooks=True, engine="horovod"))

    assert said[-1] == ("04_distributed_horovod: no test accuracy found (the notebook returned: notebook 4 needs "
                        "Horovod, which this runtime does not ship)")


def test_no_wait_returns_once_submitted(fake, run_submit):
    result, said = run_submit(fake, wait=False)

    assert said == [f"run {result.run_id}: {fake.runs[result.run_id]['run_page_url']}"]
    assert fake.run_states(result.run_id) == ["PENDING"]
    endpoints = {(r.method, r.path) for r in fake.calls()}
    assert endpoints == submitting.SUBMIT_ENDPOINTS


def test_a_failed_task_is_one_line_with_its_error_and_exit_code_1(fake, capsys):
    from penguin_lab.cli import main

    fake.run_outcome = "FAILED"
    fake.task_logs["run"] = "penguin-lab: error: penguins.csv: row 12, column 'BodyMass': 'heavy' is not a number\n"

    code = main(["submit", "--host", fake.url, "--poll-seconds", "0.01"])

    shown = capsys.readouterr()
    errors = [line for line in shown.err.splitlines() if line.startswith("penguin-lab: error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in shown.err
    assert "ended TERMINATED FAILED: task run: penguins.csv: row 12, column 'BodyMass'" in errors[0]
    assert "state: TERMINATED FAILED" in shown.out


def test_a_cluster_that_cannot_start_is_one_line_with_the_reason(fake, run_submit):
    fake.run_outcome = "CLUSTER_FAILED"

    with pytest.raises(RunFailed) as raised:
        run_submit(fake)

    message = str(raised.value)
    assert "ended INTERNAL_ERROR FAILED" in message and "QuotaExceeded" in message and "\n" not in message
    assert raised.value.exit_code == 1


def test_ctrl_c_while_waiting_cancels_the_run(fake):
    fake.run_outcome = "HANG"
    process = cli("--host", fake.url, "--poll-seconds", "0.05")
    try:
        deadline = time.monotonic() + 60
        while not (fake.runs and "RUNNING" in fake.run_states(next(iter(fake.runs)))):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()

    [run_id] = fake.runs
    assert fake.cancelled == [run_id]
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("penguin-lab: error:")]
    assert lines == [f"penguin-lab: error: interrupted: cancelled run {run_id} ({fake.runs[run_id]['run_page_url']})"]
    assert "Traceback" not in err and "state: RUNNING" in out


# ============================================================================================
# Dry run and credentials
# ============================================================================================


def test_dry_run_prints_every_body_and_contacts_no_server(clean_env):
    with socket.socket() as listener:  # where DATABRICKS_HOST points: any connection would queue here
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        process = cli("--dry-run", "--epochs", "4", env={"DATABRICKS_HOST": host})
        out, err = process.communicate(timeout=120)
        with pytest.raises(BlockingIOError):
            listener.accept()

    assert process.returncode == 0, err
    blocks = out.split("\nPOST ")
    assert out.startswith("GET /api/2.0/preview/scim/v2/Me\nGET /api/2.1/clusters/spark-versions\n")
    bodies = {block.split("\n", 1)[0]: json.loads(block.split("\n", 1)[1]) for block in blocks[1:]}
    assert list(bodies) == ["/api/2.0/workspace/mkdirs", "/api/2.0/workspace/import", SUBMIT]
    [task] = bodies[SUBMIT]["tasks"]
    assert task["new_cluster"] == expected_cluster(submitting.UNKNOWN_USER, submitting.UNKNOWN_RUNTIME)
    assert task["python_wheel_task"]["parameters"] == ["run", "--epochs", "4", "--seed", "0"]
    assert task["libraries"][0]["whl"] == "/Workspace" + bodies["/api/2.0/workspace/import"]["path"]


def test_missing_credentials_are_one_line_saying_how_to_set_them(clean_env):
    process = cli()
    out, err = process.communicate(timeout=120)
    line = assert_one_line_error(subprocess.CompletedProcess([], process.returncode, out, err), "DATABRICKS_HOST",
                                 "DATABRICKS_TOKEN", "--profile")
    assert "credentials" in line


def test_a_rejected_token_is_one_line_and_nothing_is_submitted(fake, run_submit, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-expired")

    with pytest.raises(LabError, match="401") as raised:
        run_submit(fake)
    assert "\n" not in str(raised.value) and fake.calls("POST") == []


def test_permission_denied_is_one_line(fake, run_submit):
    fake.forbidden.add(("POST", SUBMIT))

    with pytest.raises(LabError) as raised:
        run_submit(fake)
    assert str(raised.value).startswith("permission denied by ") and "\n" not in str(raised.value)
    assert fake.runs == {}


# ============================================================================================
# The wheel
# ============================================================================================


def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_lab(tmp_path, built_wheel):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # torch, pyspark and the rest come from this venv's site-packages, put after the new one's on sys.path (a
    # path line in a .pth file: that folder's own .pth files, the checkout's editable install among them, are
    # not read, so penguin_lab can only come from the wheel).
    [site_packages] = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    (venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "lab-libraries.pth").write_text(
        site_packages + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(built_wheel.path)], check=True)
    archive = Path(sys.prefix) / "penguin-lab-spark.jsa"  # the same pyspark, so its class archive fits
    if archive.is_file():
        (venv / archive.name).symlink_to(archive)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the package and its data come from the wheel
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import penguin_lab, penguin_lab.config as c; "
                            "print(penguin_lab.__file__); print(c.DEFAULT_DATA)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where

    done = subprocess.run([venv / "bin" / "penguin-lab", "run", "--epochs", "3", "--no-tracking", "--out", "out"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("test accuracy ")
    assert json.loads((elsewhere / "out" / "metrics.json").read_text())["epochs"] == 3
    failed = subprocess.run([venv / "bin" / "penguin-lab-job", "run", "--data", "missing.csv"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "penguin-lab: error:" in failed.stderr


def test_the_submit_modules_import_without_the_databricks_sdk():
    code = "import sys; sys.modules['databricks'] = None; import penguin_lab.submit, penguin_lab.jobrun; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
