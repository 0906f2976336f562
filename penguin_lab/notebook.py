"""Small helpers that let the same notebooks run on Databricks and with plain `python` locally."""

from __future__ import annotations

import builtins
import inspect
import os
from pathlib import Path

from .config import DEFAULT_DATA, TrainConfig
from .errors import LabError

ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION" in os.environ

# name: (widget label, local environment variable, default off Databricks, default on Databricks)
PARAMETERS = {
    "data_path": ("Data: CSV or Parquet file or folder (dbfs:/..., /Volumes/..., a path) or a table",
                  "PENGUIN_LAB_DATA", str(DEFAULT_DATA), str(DEFAULT_DATA)),
    "output_dir": ("Results folder", "PENGUIN_LAB_OUT", "runs/notebooks", "/dbfs/tmp/penguin-lab"),
    "epochs": ("Epochs", "PENGUIN_LAB_EPOCHS", str(TrainConfig.epochs), str(TrainConfig.epochs)),
    "seed": ("Random seed", "PENGUIN_LAB_SEED", str(TrainConfig.seed), str(TrainConfig.seed)),
    "drop_invalid": ("Drop rows with invalid values (true/false)", "PENGUIN_LAB_DROP_INVALID", "false", "false"),
    "tracking": ("Log the run to MLflow (true/false)", "PENGUIN_LAB_TRACKING", "true", "true"),
    "model": ("Model to score with (empty: the model in the results folder; or runs:/..., models:/...)",
              "PENGUIN_LAB_MODEL", "", ""),
    "register_model": ("Register the model as (on Unity Catalog: catalog.schema.model; empty: do not)",
                       "PENGUIN_LAB_REGISTER", "", ""),
}


def parameters(dbutils=None) -> dict:
    """Notebook parameters: widgets on Databricks, environment variables locally."""
    values = {}
    for name, (label, env, local_default, databricks_default) in PARAMETERS.items():
        if dbutils is not None:
            dbutils.widgets.text(name, databricks_default, label)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(env, local_default)
    values["data_path"] = file_path(values["data_path"])
    values["epochs"] = _whole_number("epochs", values["epochs"], low=1)
    values["seed"] = _whole_number("seed", values["seed"], low=0)
    for name in ("drop_invalid", "tracking"):
        values[name] = _flag(name, values[name])
    values["register_model"] = values["register_model"].strip() or None
    return values


def _flag(name: str, text: str) -> bool:
    flag = text.strip().lower()
    if flag not in ("true", "false", "yes", "no", "on", "off", "1", "0", ""):
        raise LabError(f"parameter {name}: {flag!r} is not true or false; expected true or false")
    return flag in ("true", "yes", "on", "1")


def _whole_number(name: str, text: str, low: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise LabError(f"parameter {name}: {text!r} is not a whole number; expected a number >= {low}") from None
    if value < low:
        raise LabError(f"parameter {name}: {value} is too small; expected a number >= {low}")
    return value


def file_path(path: str) -> str:
    """dbfs:/x is /dbfs/x to Python's file functions on a Databricks driver."""
    return "/dbfs/" + path[len("dbfs:/"):].lstrip("/") if path.startswith("dbfs:/") else path


def show_source(obj) -> None:
    """Print the code of a function or class, so the notebook shows what it runs."""
    print(inspect.getsource(obj))


def display(frame, rows: int = 5, display_function=None) -> None:
    """Show a Spark DataFrame: with the notebook's `display` (Databricks' table) when there is one, else
    `frame.show(rows)`. The notebook's `display` is `display_function`, or the caller's global or builtin one."""
    if display_function is None:
        caller = inspect.currentframe().f_back
        display_function = caller.f_globals.get("display", getattr(builtins, "display", None))
    # IPython's display knows nothing of Spark: it would print the schema only. (A notebook may also have
    # imported this function under the name `display`.)
    if display_function is None or display_function is display or _from_ipython(display_function):
        frame.show(rows)
    else:
        display_function(frame)


def _from_ipython(function) -> bool:
    return (getattr(function, "__module__", None) or "").startswith("IPython")


def show_figure(figure) -> None:
    """Display a matplotlib figure in a notebook; locally there is nothing to display it on."""
    if ON_DATABRICKS or _in_ipython():
        from matplotlib import pyplot as plt
        plt.show()


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
        return get_ipython() is not None
    except ImportError:
        return False


def output_path(params: dict) -> Path:
    return Path(params["output_dir"])
