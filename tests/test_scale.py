"""Spark does the data work at any size: multi-JVM clusters, and a bad row deep in a large file.

On a cluster whose executors are separate JVMs, nothing can lean on the driver's memory or on local
objects: the lab's run must give the same counts and the same prepared rows as on `local[2]`.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import DATA, assert_one_line_error, run_cli
from spark_cluster import LOCAL_CLUSTER, cluster_env, standalone_master  # noqa: F401 (a fixture)

COUNTS = ["input_rows", "incomplete_rows", "duplicate_rows", "invalid_rows", "train_rows", "test_rows", "overlap_rows"]


def _messy_copy(tmp_path):
    """The shipped rows, with a repeated header, a duplicate and an incomplete row: every count is non-zero."""
    lines = DATA.read_text().splitlines(keepends=True)
    path = tmp_path / "messy.csv"
    path.write_text("".join(lines[:200] + [lines[0]] + lines[200:] + [lines[5], "Dream,NA,17.9,192,3500,2\n"]))
    return path


def _run(tmp_path, name, data, env=None):
    out = tmp_path / name
    result = run_cli("run", "--data", str(data), "--epochs", "3", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {side: sorted(pq.read_table(out / "prepared" / side).to_pylist(), key=lambda r: r["Row"])
            for side in ("train", "test")}
    return metrics, rows


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("local")
    return _run(tmp_path, "local", _messy_copy(tmp_path))


@pytest.mark.cluster
def test_local_cluster_prepares_exactly_what_local_mode_does(local_result, tmp_path):
    metrics, rows = _run(tmp_path, "cluster", _messy_copy(tmp_path), cluster_env(LOCAL_CLUSTER, tmp_path))
    local_metrics, local_rows = local_result
    assert {k: metrics[k] for k in COUNTS} == {k: local_metrics[k] for k in COUNTS}
    assert metrics["repeated_header_rows"] == 1 and metrics["duplicate_rows"] == 1 and metrics["overlap_rows"] == 0
    assert rows == local_rows
    assert metrics["test_accuracy"] == local_metrics["test_accuracy"]


@pytest.mark.cluster
def test_a_standalone_cluster_prepares_exactly_what_local_mode_does(local_result, standalone_master, tmp_path):
    """A spark:// master: executors in other JVMs started by workers, with their own working folders."""
    data = _messy_copy(tmp_path)
    metrics, rows = _run(tmp_path, "standalone", data, cluster_env(standalone_master, tmp_path))
    local_metrics, local_rows = local_result
    assert {k: metrics[k] for k in COUNTS} == {k: local_metrics[k] for k in COUNTS}
    assert rows == local_rows


@pytest.mark.cluster
def test_a_bad_row_is_found_on_a_cluster(tmp_path):
    lines = DATA.read_text().splitlines(keepends=True)
    data = tmp_path / "bad.csv"
    data.write_text("".join(lines[:300] + ["Biscoe,46.1,13.2,211,heavy,1\n"] + lines[300:]))
    result = run_cli("run", "--data", str(data), "--out", str(tmp_path / "out"),
                     env=cluster_env(LOCAL_CLUSTER, tmp_path))
    assert_one_line_error(result, f"{data}: row 301, column 'BodyMass': 'heavy' is not a number")
    assert not (tmp_path / "out").exists()


def test_a_bad_value_on_line_1987654_of_two_million_is_named(tmp_path):
    """At any size the message names the line; nothing is written."""
    rng = np.random.default_rng(0)
    n = 2_000_000
    islands = np.array(["Biscoe", "Dream", "Torgersen"])[rng.integers(0, 3, n)]
    lengths = np.round(rng.uniform(30, 60, n), 1).astype(str)
    species = rng.integers(0, 3, n).astype(str)
    body = np.char.add(np.char.add(np.char.add(islands, ","), lengths), ",18.7,190,")
    body = np.char.add(np.char.add(body, np.full(n, "4000,")), species)
    body[1_987_654 - 2] = "Dream,46.5,17.9,192,heavy,2"  # line 1 is the header
    data = tmp_path / "two-million.csv"
    with open(data, "w") as f:
        f.write("Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass,Species\n")
        f.write("\n".join(body.tolist()) + "\n")
    result = run_cli("run", "--data", str(data), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, f"{data}: row 1987654, column 'BodyMass': 'heavy' is not a number; expected")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two-million.csv"]
