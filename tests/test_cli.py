"""`penguin-lab run`: what it writes and prints, and how it fails."""

import json

from conftest import assert_one_line_error, run_cli

REQUIRED_METRICS = {"test_accuracy", "train_rows", "test_rows", "overlap_rows", "epochs", "train_seconds",
                    "total_seconds", "final_train_loss", "final_val_loss", "history"}


def test_run_writes_metrics_plot_weights_and_model(lab_run):
    out, result = lab_run
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "confusion.png", "loss.png", "metrics.json", "model",
                                                        "prepared", "weights.txt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_METRICS <= set(metrics)
    assert set(metrics["history"]) == {"epoch", "train_loss", "val_loss", "val_accuracy"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = (out / "weights.txt").read_text()
    assert "fc1.weight (10, 5)" in weights and "fc3.bias (3,)" in weights
    assert "test accuracy" in result.stdout and str(out) in result.stdout
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_run_keeps_the_prepared_parquet_and_says_where(lab_run):
    import pyarrow.parquet as pq

    out, _ = lab_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prepared"] == {"train": "prepared/train", "test": "prepared/test", "format": "parquet",
                                   "standardization": json.loads((out / "model" / "model.json").read_text())[
                                       "standardization"]}
    train = pq.read_table(out / metrics["prepared"]["train"])
    test = pq.read_table(out / metrics["prepared"]["test"])
    assert (train.num_rows, test.num_rows) == (metrics["train_rows"], metrics["test_rows"])
    assert train.column_names == ["Row", "IslandIdx", "CulmenLength", "CulmenDepth", "FlipperScaled",
                                  "MassScaled", "Species"]
    assert not set(train.column("Row").to_pylist()) & set(test.column("Row").to_pylist())
    stages = metrics["stage_seconds"]
    assert set(stages) == {"read", "prepare", "train", "write"}
    assert sum(stages.values()) <= metrics["total_seconds"]


def test_same_seed_same_metrics_through_the_command_line(tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_cli("run", "--epochs", "3", "--seed", "7", "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        runs.append({k: v for k, v in metrics.items() if not k.endswith("seconds") and k != "data"})
    assert runs[0] == runs[1]
    assert (tmp_path / "a/model/model.safetensors").read_bytes() == (tmp_path / "b/model/model.safetensors").read_bytes()


def test_bad_arguments_and_missing_data_are_one_line(tmp_path):
    missing = run_cli("run", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out"))
    assert_one_line_error(missing, "nope.csv", "no such file")
    assert not (tmp_path / "out").exists()
    bad_epochs = run_cli("run", "--epochs", "zero")
    assert bad_epochs.returncode == 2 and "Traceback" not in bad_epochs.stderr


def test_island_names_differing_only_in_case_are_one_line_and_write_nothing(tmp_path):
    from conftest import DATA

    lines = DATA.read_text().splitlines()
    at = max(i for i, line in enumerate(lines) if line.startswith("Dream,"))  # the last Dream row
    lines[at] = "dream," + lines[at].split(",", 1)[1]
    data = tmp_path / "mixed.csv"
    data.write_text("\n".join(lines) + "\n")
    result = run_cli("run", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1")
    assert_one_line_error(result, "mixed.csv", f"row {at + 1}, column 'Island'",
                          "'dream' differs only in case from 'Dream'", "expected one spelling per island")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.csv"]


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "run", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_learning_rate_and_seed_are_checked_before_anything_starts(capsys):
    """NaN or negative learning rates and seeds no generator accepts used to fail deep inside PyTorch."""
    import pytest

    from penguin_lab.cli import main

    for args, fragment in [(["--learning-rate", "nan"], "'nan' must be a positive number"),
                           (["--learning-rate", "-0.1"], "'-0.1' must be a positive number"),
                           (["--learning-rate", "fast"], "'fast' is not a number"),
                           (["--seed", "-1"], "'-1' must be from 0 to 4294967295"),
                           (["--seed", str(2**64)], "must be from 0 to 4294967295")]:
        with pytest.raises(SystemExit) as exit_:
            main(["run", *args])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err
