"""The model in MLflow: logged from code with its safetensors weights, registered, and fetched back by URI."""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import io
import logging
import os
from pathlib import Path

from .artifacts import METADATA_FILE
from .config import ISLAND, MEASUREMENTS, SPECIES
from .errors import LabError
from .spark import on_databricks

# The lab's own example penguin (a Gentoo).
INPUT_EXAMPLE = {ISLAND: "Biscoe", "CulmenLength": 50.4, "CulmenDepth": 15.3, "FlipperLength": 200.0,
                 "BodyMass": 5000.0}
MODEL_URI_SCHEMES = ("runs:/", "models:/", "dbfs:/", "file:/")
STORE_FILE = "mlflow.db"


def default_tracking_uri(runs_folder: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if on_databricks():
        return "databricks"
    return f"sqlite:///{Path(runs_folder).resolve() / STORE_FILE}"


def quiet_mlflow() -> None:
    """The SQLite store's migrations and MLflow's notes are logged at INFO; only problems should show."""
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # An unreachable server is a warning within seconds, not minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def use_tracking_uri(uri: str) -> None:
    """MLflow's store for this process. mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which would
    then decide where every later run of this process (and its children) goes: the variable is put back."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def signature(species: list = SPECIES):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", ISLAND), *[ColSpec("double", m) for m in MEASUREMENTS]])
    outputs = Schema([ColSpec("string", "predicted_species"), *[ColSpec("double", f"p_{s}") for s in species],
                      ColSpec("string", "reason", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list:
    return [f"{name}=={metadata.version(name)}" for name in ("mlflow", "torch", "safetensors", "numpy", "pandas")]


def log_penguin_model(model_dir: Path, name: str = "model"):
    """Log a penguin-lab model folder as a pyfunc in the active run; returns MLflow's ModelInfo.

    The pyfunc is this package's mlflow_pyfunc.py (models-from-code: nothing is pickled); the
    package travels with it as code, and the model folder as its artifact."""
    import mlflow
    import pandas as pd

    from .mlflow_pyfunc import ARTIFACT

    package = Path(__file__).resolve().parent
    # MLflow 3 names the model; 2.x (Databricks Runtime 15.4 LTS ML ships 2.13 to 2.19) gives it a path.
    where = {"name": name} if int(mlflow.__version__.split(".")[0]) >= 3 else {"artifact_path": name}
    return mlflow.pyfunc.log_model(
        **where, python_model=str(package / "mlflow_pyfunc.py"), artifacts={ARTIFACT: str(model_dir)},
        code_paths=[str(package)], signature=signature(), input_example=pd.DataFrame([INPUT_EXAMPLE]),
        pip_requirements=requirements())


def register_model(model_uri: str, name: str) -> str:
    """A new version of `name`: in Unity Catalog for catalog.schema.model names on Databricks, else in the
    tracking store's own registry. Returns the version."""
    import mlflow

    if on_databricks() and name.count(".") == 2:
        mlflow.set_registry_uri("databricks-uc")
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Successfully registered model ..."
        return mlflow.register_model(model_uri, name).version


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODEL_URI_SCHEMES)


def local_model_folder(uri: str, destination: Path) -> Path:
    """The penguin-lab model folder (model.json and the weights) inside an MLflow model, downloaded.

    Only those files are read afterwards, by penguin-lab's own loader: nothing in the download runs."""
    import mlflow

    quiet_mlflow()
    use_tracking_uri(default_tracking_uri(Path("runs")))
    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    except Exception as e:  # MLflow raises many types for a missing run, model or store
        reason = " ".join(str(e).split())[:200]
        raise LabError(f"{uri}: cannot fetch the model ({reason}); expected a runs:/ or models:/ URI of a "
                       f"penguin-lab model") from None
    found = sorted(p.parent for p in downloaded.rglob(METADATA_FILE))
    if len(found) != 1:
        raise LabError(f"{uri}: holds {len(found)} penguin-lab model folders; expected one ({METADATA_FILE} and "
                       f"its weights)")
    return found[0]
