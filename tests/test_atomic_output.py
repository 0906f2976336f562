"""Results appear whole or not at all: failures, interrupts and kills never leave a model that looks complete.

Most runs are in process (the session's Spark, real training, a real failure or signal injected at one
step); the kill, the external Ctrl-C and the concurrent runs use real `penguin-lab run` processes.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from penguin_lab import evaluate, pipeline
from penguin_lab.artifacts import load_model, staged_dir, staging_prefix
from penguin_lab.cli import main

COMPLETE = ["accuracy.png", "confusion.png", "loss.png", "metrics.json", "model", "prepared", "weights.txt"]


def run(out, *extra):
    return main(["run", "--epochs", "1", "--out", str(out), *extra])


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


def assert_complete(out):
    assert entries(out) == COMPLETE
    assert json.loads((out / "metrics.json").read_text())["epochs"] >= 1
    load_model(out / "model")


def one_line(err, *fragments):
    lines = [line for line in err.splitlines() if line.startswith("penguin-lab:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- failures and interrupts inside the run ----------------------------------------------------------

def test_a_failure_during_training_leaves_nothing(tmp_path, spark, monkeypatch, capsys):
    def broken_training(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(pipeline, "train_model", broken_training)
    assert run(tmp_path / "out") == 1
    one_line(capsys.readouterr().err, "RuntimeError: the GPU caught fire")
    assert entries(tmp_path) == []


@pytest.mark.parametrize("failure", ["error", "SIGINT", "SIGTERM"])
def test_a_failure_or_signal_while_writing_leaves_nothing(tmp_path, spark, monkeypatch, capsys, failure):
    """The model and the plot are already in the staging folder when weights.txt fails."""
    def failing_report(model):
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
        assert len(staging) == 1 and {"model", "loss.png"} <= set(entries(staging[0]))
        if failure == "error":
            raise OSError(28, "No space left on device")
        signal.raise_signal(getattr(signal, failure))
        raise AssertionError("the signal did not interrupt the run")

    monkeypatch.setattr(evaluate, "weights_report", failing_report)
    code = run(tmp_path / "out")
    err = capsys.readouterr().err
    if failure == "error":
        assert code == 2
        one_line(err, f"{tmp_path / 'out'}: cannot write the results: No space left on device; nothing was written")
    else:
        assert code == 130
        one_line(err, "penguin-lab: interrupted")
    assert entries(tmp_path) == []


def test_a_failed_rerun_keeps_the_previous_results(tmp_path, spark, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(out, "--seed", "1") == 0
    before = (out / "model" / "model.safetensors").read_bytes()

    def failing_report(model):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "weights_report", failing_report)
    assert run(out, "--seed", "2") == 2
    assert entries(tmp_path) == ["out"]
    assert_complete(out)
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_rerunning_into_the_same_folder_replaces_it_whole(tmp_path, spark, capsys):
    out = tmp_path / "out"
    assert run(out, "--seed", "1") == 0
    (out / "model" / "stale.pt").write_bytes(b"left over from an older version")
    assert run(out, "--seed", "2") == 0
    assert entries(tmp_path) == ["out"]  # no .old or .tmp folders left
    assert_complete(out)
    assert entries(out / "model") == ["model.json", "model.safetensors"]
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 2


# --- output folders that must not be replaced -----------------------------------------------------------

def test_a_folder_holding_other_files_is_never_replaced(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "notes.txt").write_text("years of work")
    (home / ".git").mkdir()
    started = time.perf_counter()
    assert run(home) == 2
    one_line(capsys.readouterr().err, f"{home}: exists and holds '.git', 'notes.txt', 'thesis', which penguin-lab "
                                      f"did not write; expected a new, empty or earlier results folder")
    assert time.perf_counter() - started < 10  # refused before Spark or training start
    assert entries(home) == [".git", "notes.txt", "thesis"] and entries(tmp_path) == ["home"]


def test_an_output_path_that_is_a_file_or_inside_one_is_refused(tmp_path, capsys):
    data = tmp_path / "penguins.csv"
    data.write_text("precious")
    assert run(data) == 2
    one_line(capsys.readouterr().err, f"{data}: exists and is not a folder")
    assert run(data / "out") == 2
    one_line(capsys.readouterr().err, f"{data / 'out'}: {data} is a file; expected a folder path")
    assert data.read_text() == "precious" and entries(tmp_path) == ["penguins.csv"]


def test_an_empty_folder_is_used(tmp_path, spark, capsys):
    (tmp_path / "out").mkdir()
    assert run(tmp_path / "out") == 0
    assert_complete(tmp_path / "out")


# --- real processes: killed, interrupted, side by side -----------------------------------------------------

def start_run(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "penguin_lab.cli", "run", "--epochs", "2", "--out", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def wait_for_staging(process, out, timeout=600) -> bool:
    """True as soon as the run's staging folder exists (it is writing results), False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir()):
            return True
        time.sleep(0.002)
    return False


def test_ctrl_c_while_writing_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    process = start_run(out)
    assert wait_for_staging(process, out), process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    if process.returncode == 0:  # the signal came after the final rename: then the results are whole
        assert_complete(out)
    else:
        assert process.returncode == 130, err
        assert "penguin-lab: interrupted" in err and "Traceback" not in err
        assert entries(tmp_path) == []


def test_a_killed_run_never_leaves_a_folder_under_the_final_name(tmp_path):
    out = tmp_path / "out"
    process = start_run(out)
    assert wait_for_staging(process, out), process.communicate()
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=300)
    if out.exists():  # killed just after the final rename
        assert_complete(out)
    leftovers = [name for name in entries(tmp_path) if name != "out"]
    assert all(name.startswith(".out.tmp-") for name in leftovers), leftovers
    # The next run into the same folder clears what the killed one left.
    rerun = start_run(out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert entries(tmp_path) == ["out"]
    assert_complete(out)


def test_only_abandoned_staging_folders_are_removed(tmp_path):
    """Staging folders of running processes, of other machines, and other files stay."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead_pid = int(ended.stdout)
    prefix = staging_prefix(tmp_path / "out")
    abandoned = tmp_path / f"{prefix}{dead_pid}-abc"
    running = tmp_path / f"{prefix}{os.getppid()}-abc"  # pytest's parent runs
    elsewhere = tmp_path / f".out.tmp-another-host-{dead_pid}-abc"
    other = tmp_path / f".other.tmp-{dead_pid}-abc"
    for folder in (abandoned, running, elsewhere, other):
        folder.mkdir()
        (folder / "half-written").write_text("x")
    with staged_dir(tmp_path / "out") as staging:
        (staging / "result").write_text("done")
    assert sorted(entries(tmp_path)) == sorted(["out", running.name, elsewhere.name, other.name])
    assert (tmp_path / "out" / "result").read_text() == "done"


def test_two_runs_into_different_folders_do_not_interfere(tmp_path):
    runs = {seed: start_run(tmp_path / f"seed{seed}", "--seed", str(seed)) for seed in (1, 2)}
    for seed, process in runs.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert entries(tmp_path) == ["seed1", "seed2"]
    weights = []
    for seed in runs:
        out = tmp_path / f"seed{seed}"
        assert_complete(out)
        assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == seed
        weights.append((out / "model" / "model.safetensors").read_bytes())
    assert weights[0] != weights[1]
