"""Every run is an MLflow run: settings, per-epoch metrics, final counts, plots and the model.

Where runs go: MLFLOW_TRACKING_URI when set; on Databricks the notebook's experiment; otherwise a
SQLite store beside the run folders (runs/mlflow.db for --out runs/X). Tracking never costs a run
its results: the first MLflow error is one warning line, tracking stops, and the run goes on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from .mlflow_models import default_tracking_uri, log_penguin_model, quiet_mlflow, register_model, use_tracking_uri
from .spark import on_databricks

EXPERIMENT = "penguin-lab"
ARTIFACT_FILES = ["loss.png", "accuracy.png", "confusion.png", "metrics.json", "weights.txt"]
# Counts and the test accuracy, logged as the run's final metrics.
FINAL_METRICS = ["test_accuracy", "input_rows", "incomplete_rows", "duplicate_rows", "invalid_rows",
                 "repeated_header_rows", "train_rows", "test_rows", "overlap_rows", "train_seconds", "total_seconds"]


def tracking_enabled(track: bool | None = None) -> bool:
    """--tracking/--no-tracking when given, else PENGUIN_LAB_TRACKING (on unless 0, off, false or no)."""
    if track is not None:
        return track
    return os.environ.get("PENGUIN_LAB_TRACKING", "on").strip().lower() not in ("0", "off", "false", "no")


def library_tags() -> dict:
    """The package and library versions, and the git commit of the checkout when there is one."""
    import importlib.metadata as metadata

    from . import __version__

    tags = {"penguin_lab.version": __version__, "python.version": sys.version.split()[0]}
    for name in ("torch", "pyspark", "mlflow", "numpy", "pandas", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"{name}.version"] = metadata.version(name)
    repo = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    return tags


class Tracking:
    """One MLflow run for one command. Disabled (enabled=False, or after an error), every call does nothing."""

    def __init__(self, enabled: bool, runs_folder: Path, uri: str | None = None):
        self.enabled = enabled
        self.uri = uri or default_tracking_uri(runs_folder)
        self.runs_folder = Path(runs_folder)
        self.run_id = None

    def _safely(self, what: str, action):
        if not self.enabled:
            return None
        try:
            return action()
        except Exception as e:  # any MLflow, network or database error: the run goes on without tracking
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            print(f"penguin-lab: warning: MLflow tracking at {self.uri} stopped ({what}: {reason}); "
                  f"the run goes on and its folder is complete", file=sys.stderr)
            self.enabled = False
            with contextlib.suppress(Exception):
                import mlflow
                mlflow.end_run("FAILED")
            return None

    def start(self, run_name: str, params: dict, tags: dict | None = None) -> None:
        def start():
            import mlflow

            quiet_mlflow()
            use_tracking_uri(self.uri)
            experiment_id = None
            if self.uri.startswith("sqlite:"):  # artifacts beside the store, not in the current folder
                client = mlflow.MlflowClient(self.uri)
                found = client.get_experiment_by_name(EXPERIMENT)
                experiment_id = found.experiment_id if found else client.create_experiment(
                    EXPERIMENT, artifact_location=(self.runs_folder.resolve() / "mlartifacts").as_uri())
            elif not on_databricks():
                experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
            self.run_id = run.info.run_id
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.set_tags({**library_tags(), **(tags or {})})
        self._safely("starting the run", start)

    def reference(self) -> dict:
        """{"mlflow": run id and store} for metrics.json, when the run is tracked."""
        return {"mlflow": {"run_id": self.run_id, "tracking_uri": self.uri}} if self.enabled and self.run_id else {}

    def epoch(self, epoch: int, train_loss: float, val_loss: float, val_accuracy: float) -> None:
        def log():
            import mlflow

            # Queued and written by MLflow's own thread: training does not wait for the store.
            mlflow.log_metrics({"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy},
                               step=epoch, synchronous=False)
        self._safely("logging an epoch", log)

    def history(self, history: dict) -> None:
        """Every epoch at once (distributed runs log from the driver after the ranks finish)."""
        for epoch, train, val, accuracy in zip(history["epoch"], history["train_loss"], history["val_loss"],
                                               history["val_accuracy"]):
            self.epoch(epoch, train, val, accuracy)

    def finish(self, out_dir: Path, metrics: dict, register: str | None = None) -> str | None:
        """Final metrics, the results' plots and files, and the model (registered under `register`).
        Returns "NAME version N" when the model was registered."""
        def finish():
            import mlflow

            mlflow.log_metrics({k: float(metrics[k]) for k in FINAL_METRICS if isinstance(metrics.get(k), (int, float))})
            for name in ARTIFACT_FILES:
                if (Path(out_dir) / name).is_file():
                    mlflow.log_artifact(str(Path(out_dir) / name))
            info = log_penguin_model(Path(out_dir) / "model")
            if register:
                registered = f"{register} version {register_model(info.model_uri, register)}"
                mlflow.set_tag("registered_model", registered)
            mlflow.end_run("FINISHED")
            return registered if register else None
        return self._safely("logging the results", finish)

    def fail(self, reason: str) -> None:
        """The run ended in an error: marked FAILED, with its one-line reason."""
        def fail():
            import mlflow

            mlflow.set_tag("failure", reason[:5000])
            mlflow.end_run("FAILED")
        if self.run_id is not None:
            self._safely("marking the run failed", fail)


@contextlib.contextmanager
def tracked(tracking: Tracking):
    """Marks the run FAILED with its reason if the block raises (then re-raises)."""
    try:
        yield tracking
    except BaseException as e:
        tracking.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise


def run_params(config, data, engine: str = "single", world_size: int = 1) -> dict:
    return {**config.to_dict(), "engine": engine, "world_size": world_size, "data": str(data)}


def log_run(run_name: str, params: dict, history: dict, metrics: dict, folder: Path, register: str | None = None,
            enabled: bool | None = None) -> Tracking:
    """A finished run, logged at once (a notebook's distributed training): its epochs, counts, files and model."""
    tracking = Tracking(tracking_enabled(enabled), Path(folder).resolve().parent)
    tracking.start(run_name, params)
    tracking.history(history)
    registered = tracking.finish(folder, metrics, register)
    if tracking.run_id:
        print(f"MLflow run {tracking.run_id} in {tracking.uri}" + (f"; registered as {registered}" if registered else ""))
    return tracking
