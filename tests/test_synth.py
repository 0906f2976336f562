"""`penguin-lab synth`: synthetic penguins written by the session's Spark, read back from the real files."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import DATA, REPO, assert_one_line_error, run_cli
from penguin_lab.config import ISLAND, LABEL, MEASUREMENTS, REQUIRED_COLUMNS
from penguin_lab.errors import LabError
from penguin_lab.synth import default_partitions, fit_species_gaussians, synthesize


def part_files(folder):
    return sorted(p for p in folder.iterdir() if p.name.startswith("part-"))


def read_csv_parts(folder):
    return pd.concat([pd.read_csv(p) for p in part_files(folder)], ignore_index=True)


@pytest.fixture(scope="module")
def real():
    return pd.read_csv(DATA).dropna()


@pytest.fixture(scope="module")
def synthetic_csv(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "csv"
    return out, synthesize(spark, 50_000, out, seed=1)


def test_the_fit_is_the_real_data_per_species(real):
    params = fit_species_gaussians()
    assert [p["species"] for p in params] == [0, 1, 2]
    assert sum(p["share"] for p in params) == pytest.approx(1.0)
    for p in params:
        rows = real[real[LABEL] == p["species"]]
        assert p["share"] == pytest.approx(len(rows) / len(real))
        assert p["islands"] == pytest.approx(rows[ISLAND].value_counts(normalize=True).to_dict())
        np.testing.assert_allclose(p["mean"], rows[MEASUREMENTS].mean().to_numpy())
        np.testing.assert_allclose(p["cholesky"] @ p["cholesky"].T, p["cov"])
        np.testing.assert_allclose(p["cov"], rows[MEASUREMENTS].cov().to_numpy())


def test_csv_has_the_rows_columns_and_look_of_the_real_file(synthetic_csv):
    out, result = synthetic_csv
    assert result["rows"] == 50_000 and result["format"] == "csv" and result["path"] == str(out)
    assert result["files"] == len(part_files(out)) == default_partitions(50_000) == 1
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    frame = read_csv_parts(out)
    assert len(frame) == 50_000
    assert list(frame.columns) == REQUIRED_COLUMNS
    assert frame[ISLAND].dtype == object and set(frame[ISLAND]) <= {"Biscoe", "Dream", "Torgersen"}
    assert frame[LABEL].dtype == np.int64 and set(frame[LABEL]) == {0, 1, 2}
    assert (frame[MEASUREMENTS] > 0).all().all()
    # Rounded as in the real file: culmen to a tenth of a mm, flipper and mass whole (written as "181").
    for column in ("CulmenLength", "CulmenDepth"):
        assert np.allclose(frame[column], frame[column].round(1))
    assert frame["FlipperLength"].dtype == np.int64 and frame["BodyMass"].dtype == np.int64
    lines = part_files(out)[0].read_text().splitlines()
    assert lines[0] == ",".join(REQUIRED_COLUMNS) and len(lines) == 50_001


def test_each_csv_part_file_stands_alone_with_its_header(spark, tmp_path):
    synthesize(spark, 9_000, tmp_path / "parts", seed=2, partitions=3)
    sizes = []
    for part in part_files(tmp_path / "parts"):
        frame = pd.read_csv(part, dtype={ISLAND: str, "CulmenLength": float, "CulmenDepth": float,
                                         "FlipperLength": int, "BodyMass": int, LABEL: int})
        assert list(frame.columns) == REQUIRED_COLUMNS and frame.notna().all().all()
        sizes.append(len(frame))
    assert sizes == [3_000, 3_000, 3_000]


def test_species_islands_and_means_match_the_real_data(synthetic_csv, real):
    frame = read_csv_parts(synthetic_csv[0])
    shares = frame[LABEL].value_counts(normalize=True)
    for species, share in real[LABEL].value_counts(normalize=True).items():
        assert abs(shares[species] - share) < 0.01, (species, shares[species], share)
        fake, true = frame[frame[LABEL] == species], real[real[LABEL] == species]
        assert set(fake[ISLAND]) == set(true[ISLAND])  # Gentoo only on Biscoe, Chinstrap only on Dream
        for column in MEASUREMENTS:
            assert fake[column].mean() == pytest.approx(true[column].mean(), rel=0.02), (species, column)
            assert fake[column].std() == pytest.approx(true[column].std(), rel=0.1), (species, column)
        # The measurements vary together as in the real penguins (heavy birds have long flippers).
        fake_corr = fake["FlipperLength"].corr(fake["BodyMass"])
        assert fake_corr == pytest.approx(true["FlipperLength"].corr(true["BodyMass"]), abs=0.05)


def test_the_same_seed_gives_the_same_bytes_another_seed_differs(spark, tmp_path):
    def contents(name, seed):
        synthesize(spark, 30_001, tmp_path / name, seed=seed, partitions=3)
        return [p.read_bytes() for p in part_files(tmp_path / name)]

    first, again, other = contents("a", 7), contents("b", 7), contents("c", 8)
    assert len(first) == 3 and first == again
    assert all(a != c for a, c in zip(first, other))
    # Each partition draws its own stream: no part repeats another's values.
    bodies = [part.split(b"\n", 1)[1] for part in first]
    assert len(set(bodies)) == 3
    assert sum(part.count(b"\n") - 1 for part in first) == 30_001


def test_parquet_reads_with_pyarrow_with_the_real_columns_and_types(spark, tmp_path):
    result = synthesize(spark, 2_000, tmp_path / "pq", fmt="parquet", seed=3)
    assert result["format"] == "parquet" and result["files"] == 1
    table = pq.read_table(tmp_path / "pq")
    assert table.num_rows == 2_000 and table.column_names == REQUIRED_COLUMNS
    types = {field.name: str(field.type) for field in table.schema}
    assert types == {ISLAND: "string", **{m: "double" for m in MEASUREMENTS}, LABEL: "int32"}
    frame = table.to_pandas()
    assert (frame[["FlipperLength", "BodyMass"]] == frame[["FlipperLength", "BodyMass"]].round()).all().all()


def test_an_empty_existing_folder_is_filled(spark, tmp_path):
    (tmp_path / "out").mkdir()
    synthesize(spark, 10, tmp_path / "out")
    assert len(read_csv_parts(tmp_path / "out")) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"rows": 0}, "rows 0: expected a whole number from 1"),
    ({"rows": 2.5}, "rows 2.5: expected a whole number"),
    ({"fmt": "json"}, "format 'json': unknown; expected one of csv, parquet"),
    ({"seed": -1}, "seed -1: expected a whole number from 0 to 4294967295"),
    ({"partitions": 0}, "partitions 0: expected a whole number from 1"),
])
def test_bad_arguments_are_one_line_and_write_nothing(spark, tmp_path, kwargs, fragment):
    with pytest.raises(LabError) as error:
        synthesize(spark, **{"rows": 10, "out": tmp_path / "out", **kwargs})
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_with_files_or_a_file_is_refused_and_kept(spark, tmp_path):
    kept = tmp_path / "out" / "mine.txt"
    kept.parent.mkdir()
    kept.write_text("my notes")
    with pytest.raises(LabError, match="exists and is not empty; expected a new or empty folder"):
        synthesize(spark, 10, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"] and kept.read_text() == "my notes"
    with pytest.raises(LabError, match="exists and is not a folder"):
        synthesize(spark, 10, kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left beside it


def test_the_command_line_writes_and_prints_one_line(tmp_path):
    out = tmp_path / "cli"
    result = run_cli("synth", "--rows", "1234", "--out", str(out), "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith(f"wrote 1234 synthetic penguins to {out} (csv, 1 part file) in ")
    assert result.stdout.rstrip().endswith(" s")
    assert len(read_csv_parts(out)) == 1234

    refused = run_cli("synth", "--rows", "10", "--out", str(out))
    assert_one_line_error(refused, str(out), "exists and is not empty")


@pytest.mark.parametrize("args, fragment", [
    (["--rows", "0", "--out", "x"], "'0' must be at least 1"),
    (["--rows", "many", "--out", "x"], "'many' is not a whole number"),
    (["--rows", "10", "--out", "x", "--format", "json"], "invalid choice: 'json'"),
    (["--rows", "10", "--out", "x", "--seed", "-3"], "'-3' must be from 0 to 4294967295"),
    (["--out", "x"], "the following arguments are required: --rows"),
])
def test_bad_command_line_arguments_exit_2_with_one_line(tmp_path, args, fragment):
    result = run_cli("synth", *args, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- real processes: interrupted or killed while Spark writes ---------------------------------------------

def start_synth(out, rows=20_000_000):
    """A write long enough (tens of seconds) to be caught in the middle."""
    return subprocess.Popen([sys.executable, "-m", "penguin_lab.cli", "synth", "--rows", str(rows), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def wait_for_part_files(process, out, timeout=300) -> bool:
    """True once Spark has begun writing part files into the hidden staging folder, False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for staging in out.parent.glob(f".{out.name}.tmp-*"):
            if any(staging.rglob("part-0*")):  # a task's file, not only the folder set up for them
                return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_write_leaves_nothing_and_prints_one_line(tmp_path, sig):
    out = tmp_path / "out"
    process = start_synth(out)
    assert wait_for_part_files(process, out), process.communicate()
    process.send_signal(sig)
    stdout, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "penguin-lab: interrupted" in err and stdout == ""
    # Spark's writer logs an aborted job as an error with a Java stack trace; none reaches the console.
    assert "Traceback" not in err and "ERROR" not in err and "Exception" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_write_leaves_only_a_hidden_folder_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    process = start_synth(out)
    assert wait_for_part_files(process, out), process.communicate()
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=300)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert not out.exists() and all(name.startswith(".out.tmp-") for name in leftovers), leftovers
    rerun = run_cli("synth", "--rows", "100", "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert len(read_csv_parts(out)) == 100
