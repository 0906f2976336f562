"""Shared fixtures: one local Spark session, one full 100-epoch run, and a way to call the real CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "penguins.csv"
# Runs are MLflow runs by default; only the tracking tests (test_tracking.py) turn it on, with a store of
# their own, so that other tests neither wait for MLflow nor leave mlflow.db files beside their folders.
os.environ["PENGUIN_LAB_TRACKING"] = "off"


@pytest.fixture(scope="session")
def spark():
    from penguin_lab.spark import get_spark

    return get_spark()


@pytest.fixture(scope="session")
def raw():
    from penguin_lab.read import read_penguins_csv

    frame, _ = read_penguins_csv(DATA)
    return frame


@pytest.fixture(scope="session")
def prepared(spark, raw):
    from penguin_lab.config import TrainConfig
    from penguin_lab.data import prepare_splits

    return prepare_splits(spark, raw, TrainConfig())


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory):
    """The whole lab with its defaults (100 epochs), through the real command line."""
    out = tmp_path_factory.mktemp("lab") / "run"
    result = run_cli("run", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory):
    """A valid model folder, saved without Spark or training: seeded weights, the shipped data's ranges."""
    import torch

    from penguin_lab.artifacts import save_model
    from penguin_lab.data import measurement_ranges
    from penguin_lab.model import PenguinNet
    from penguin_lab.read import read_penguins_csv

    torch.manual_seed(0)
    frame, _ = read_penguins_csv(DATA)
    folder = tmp_path_factory.mktemp("saved") / "model"
    return save_model(PenguinNet(), folder, ["Biscoe", "Dream", "Torgersen"], measurement_ranges(frame))


@pytest.fixture
def model_dir(saved_model, tmp_path):
    """A copy of saved_model that a test may damage."""
    import shutil

    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def run_cli(*args, timeout=600, env=None, cwd=None):
    """Run `penguin-lab ARGS` in a fresh Python process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "penguin_lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)


def assert_one_line_error(result, *fragments, code=2):
    """A clean failure: the exit code, one line on stderr with the given words, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("penguin-lab: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
