"""Small helpers that let the same notebooks run on Databricks and with plain `python` locally."""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import os
import sys
import tempfile
from pathlib import Path

from .config import DEFAULT_DATA, TrainConfig
from .errors import LabError
from .spark import on_databricks

# The results on Databricks: on DBFS when the cluster has it, else on the driver's own disk (a Unity Catalog
# workspace without a DBFS root); a /Volumes/... path keeps them beyond the cluster's life.
DBFS_RESULTS = "/dbfs/tmp/penguin-lab"


def databricks_results(dbfs: str = "/dbfs") -> str:
    return DBFS_RESULTS if os.path.isdir(dbfs) else os.path.join(tempfile.gettempdir(), "penguin-lab")


# name: (widget label, local environment variable, default off Databricks, default on Databricks: None for
# databricks_results())
PARAMETERS = {
    "data_path": ("Data: CSV or Parquet file or folder (dbfs:/..., /Volumes/..., a path) or a table",
                  "PENGUIN_LAB_DATA", str(DEFAULT_DATA), str(DEFAULT_DATA)),
    "output_dir": ("Results folder (/Volumes/..., /dbfs/..., a path)", "PENGUIN_LAB_OUT", "runs/notebooks", None),
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
            default = databricks_results() if databricks_default is None else databricks_default
            dbutils.widgets.text(name, default, label)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(env, local_default)
    for name in ("data_path", "output_dir"):
        values[name] = file_path(values[name].strip())
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
        display_function = _notebook_display()
    # IPython's display knows nothing of Spark: it would print the schema only. (A notebook may also have
    # imported this function under the name `display`.)
    if display_function is None or display_function is display or _from_ipython(display_function):
        frame.show(rows)
    else:
        display_function(frame)


def _notebook_display():
    """The `display` of the notebook that called this module's function: its global one, or the builtin one."""
    caller = inspect.currentframe().f_back.f_back
    return caller.f_globals.get("display", getattr(builtins, "display", None))


def _from_ipython(function) -> bool:
    return (getattr(function, "__module__", None) or "").startswith("IPython")


def show_figure(figure, display_function=None) -> None:
    """Show a matplotlib figure inline: with the notebook's `display` (Databricks renders a figure) when there is
    one, else with IPython's; a plain `python` run has nothing to show it on."""
    if display_function is None:
        display_function = _notebook_display()
    if display_function is not None and display_function not in (display, show_figure):
        display_function(figure)
        from matplotlib import pyplot as plt
        plt.close(figure)  # shown once: an inline backend would show a figure still open at the cell's end again
    elif on_databricks() or _in_ipython():
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


def stop(dbutils, message: str) -> None:
    """End the notebook here with one line: dbutils.notebook.exit on Databricks, exit status 1 locally."""
    if dbutils is not None:
        dbutils.notebook.exit(message)
    raise SystemExit(f"penguin-lab: {message}")


def runtime() -> str:
    version = os.environ.get("DATABRICKS_RUNTIME_VERSION")
    return f"Databricks Runtime {version}" if version else f"Python {sys.version.split()[0]} on this machine"


def require(dbutils, *modules: str) -> None:
    """Stop in one line when this runtime lacks a library the notebook needs (torch on a runtime that is not ML)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        where = "a Databricks Runtime ML, 15.4 LTS ML or newer" if on_databricks() else "`make install`"
        stop(dbutils, f"this notebook needs {', '.join(missing)}, which {runtime()} lacks; expected {where}")


def horovod_runner(dbutils):
    """The HorovodRunner class: sparkdl's on Databricks Runtime ML 15.4 LTS and older, else penguin_lab's where
    Horovod is installed. Without either the notebook stops, in one line that says where it runs."""
    from .distributed import horovod_available, horovod_runner_class

    runner = horovod_runner_class()
    if runner.__module__.startswith("sparkdl") or horovod_available():
        return runner
    if on_databricks():
        stop(dbutils, f"notebook 4 needs Databricks Runtime 15.4 LTS ML or older, where Horovod and sparkdl's "
                      f"HorovodRunner are installed; this cluster runs {runtime()}, without them: notebook 5 "
                      f"trains the same model with TorchDistributor here")
    stop(dbutils, "notebook 4 needs Horovod, which is not installed: `make horovod` builds it once for this "
                  "PyTorch; notebook 5 trains the same model with TorchDistributor without it")
