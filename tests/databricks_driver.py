"""A Databricks driver, played on this machine: runs a notebook's cells the way a Databricks cluster does.

`run_notebook(path, widgets, runtime)` starts a fresh Python (a notebook's own interpreter on the driver) that:
- has DATABRICKS_RUNTIME_VERSION set and works in the notebook's folder, as Databricks Runtime 14 and later do;
- runs the cells in order, in one namespace holding `spark` (a real local SparkSession), `sc`, `dbutils` (widgets
  with defaults and given values, the notebook's context with its path in the workspace, `fs`, `notebook.exit`)
  and `display`; there is no `__file__`, as in a notebook;
- runs `%pip` cells with pip into this environment, torch held at the version installed;
- skips `%md` cells, and stops at the first error or at dbutils.notebook.exit.
What the notebook displayed, the widgets it defined and how it ended come back as a report.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEPARATOR = re.compile(r"^# COMMAND ----------$", re.MULTILINE)
WORKSPACE_USER = "learner@example.com"


@dataclass
class NotebookRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict

    def displayed(self, kind: str) -> list:
        return [item for item in self.report["displayed"] if item["kind"] == kind]


def run_notebook(notebook: Path, widgets: dict | None = None, runtime: str = "17.3", env: dict | None = None,
                 timeout: int = 900) -> NotebookRun:
    """Run `notebook` on a played Databricks driver of `runtime`, with the widget values `widgets`."""
    with tempfile.TemporaryDirectory(prefix="databricks-driver-") as scratch:
        report_file = Path(scratch) / "report.json"
        child_env = {**os.environ, **(env or {}), "DATABRICKS_RUNTIME_VERSION": runtime, "MPLBACKEND": "Agg"}
        done = subprocess.run([sys.executable, __file__, str(Path(notebook).resolve()), str(report_file),
                               json.dumps(widgets or {})], capture_output=True, text=True, env=child_env,
                              cwd=Path(notebook).resolve().parent, timeout=timeout)
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    return NotebookRun(done.returncode, done.stdout, done.stderr, report)


def cells(text: str) -> list[str]:
    """The cells of a Databricks source file, in order."""
    header, _, body = text.partition("\n")
    if header != "# Databricks notebook source":
        raise ValueError("not a Databricks notebook source file: the first line is not '# Databricks notebook source'")
    return [cell.strip("\n") for cell in SEPARATOR.split(body)]


def magic(cell: str) -> str | None:
    """The magic command of a `# MAGIC` cell (`%md ...`, `%pip install ...`), or None for a Python cell."""
    lines = [line for line in cell.splitlines() if line.strip()]
    if lines and all(line.startswith("# MAGIC") for line in lines):
        return "\n".join(line[len("# MAGIC"):].removeprefix(" ") for line in lines).strip()
    return None


# --- dbutils ---------------------------------------------------------------------------------------------------

class NotebookExit(Exception):
    """dbutils.notebook.exit(value): the notebook stops there, and `value` is its result."""


class Widgets:
    def __init__(self, given: dict):
        self.given = {name: str(value) for name, value in given.items()}
        self.defined: dict[str, dict] = {}

    def _define(self, kind: str, name: str, default: str, label: str | None, choices=None) -> None:
        if choices is not None and default not in choices:
            raise ValueError(f"widget {name}: default value {default!r} is not one of the choices {choices}")
        self.defined[name] = {"kind": kind, "default": default, "label": label, "choices": choices}

    def text(self, name, defaultValue, label=None):
        self._define("text", name, defaultValue, label)

    def dropdown(self, name, defaultValue, choices, label=None):
        self._define("dropdown", name, defaultValue, label, list(choices))

    def combobox(self, name, defaultValue, choices, label=None):
        self._define("combobox", name, defaultValue, label)

    def get(self, name):
        if name not in self.defined:
            raise ValueError(f"InputWidgetNotDefined: no input widget named {name} is defined")
        value = self.given.get(name, self.defined[name]["default"])
        choices = self.defined[name]["choices"]
        if choices is not None and value not in choices:
            raise ValueError(f"widget {name}: {value!r} is not one of the choices {choices}")
        return value

    def getAll(self):
        return {name: self.get(name) for name in self.defined}

    def remove(self, name):
        self.defined.pop(name, None)

    def removeAll(self):
        self.defined.clear()


class _Value:  # a Scala Option, as the notebook context returns its fields
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value

    def isDefined(self):
        return self.value is not None


class _Context:
    def __init__(self, path: str):
        self.path = path

    def notebookPath(self):
        return _Value(self.path)


class _EntryPoint:
    """dbutils.notebook.entry_point.getDbutils().notebook().getContext(): the chain notebooks use for their path."""

    def __init__(self, path: str):
        self.context = _Context(path)

    def getDbutils(self):
        return self

    def notebook(self):
        return self

    def getContext(self):
        return self.context


class Notebook:
    def __init__(self, path: str):
        self.entry_point = _EntryPoint(path)

    def exit(self, value):
        raise NotebookExit(str(value))


class FileSystem:
    """dbutils.fs on the driver's own disk (file:/ and plain paths)."""

    @staticmethod
    def _local(path: str) -> Path:
        if re.match(r"^[a-z][a-z0-9+.-]*:", path) and not path.startswith("file:"):
            raise ValueError(f"{path}: only file:/ and local paths exist on this driver")
        return Path(re.sub(r"^file:(//)?", "", path))

    def ls(self, path):
        folder = self._local(path)
        return [FileInfo(f"file:{p}" + ("/" if p.is_dir() else ""), p.name + ("/" if p.is_dir() else ""),
                         0 if p.is_dir() else p.stat().st_size, int(p.stat().st_mtime * 1000))
                for p in sorted(folder.iterdir())]

    def mkdirs(self, path):
        self._local(path).mkdir(parents=True, exist_ok=True)
        return True

    def rm(self, path, recurse=False):
        target = self._local(path)
        if target.is_dir():
            if not recurse:
                raise ValueError(f"{path} is a folder: pass recurse=True")
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            return False
        return True

    def cp(self, source, destination, recurse=False):
        source, destination = self._local(source), self._local(destination)
        if source.is_dir():
            if not recurse:
                raise ValueError(f"{source} is a folder: pass recurse=True")
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, destination)
        return True

    def put(self, path, contents, overwrite=False):
        target = self._local(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass overwrite=True")
        target.write_text(contents)
        return True

    def head(self, path, maxBytes=65536):
        return self._local(path).read_bytes()[:maxBytes].decode("utf-8", "replace")


@dataclass
class FileInfo:
    path: str
    name: str
    size: int
    modificationTime: int


class DBUtils:
    def __init__(self, widgets: dict, notebook_path: str):
        self.widgets = Widgets(widgets)
        self.notebook = Notebook(notebook_path)
        self.fs = FileSystem()


def workspace_path(notebook: Path) -> str:
    """The notebook's path as Databricks' context gives it, for a repository imported into a user's folder:
    no /Workspace in front, no extension."""
    notebook = notebook.resolve()
    return f"/Users/{WORKSPACE_USER}/{notebook.parent.parent.name}/{notebook.parent.name}/{notebook.stem}"


# --- the driver ------------------------------------------------------------------------------------------------

class Display:
    """Databricks' display(): evaluates and shows a DataFrame as a table (its first 1000 rows), renders a figure."""

    def __init__(self):
        self.items = []

    def __call__(self, obj, *args, **kwargs):
        kind = type(obj).__name__
        if type(obj).__module__.startswith("pyspark.sql") and hasattr(obj, "collect"):
            rows = obj.limit(1000).collect()
            item = {"kind": "DataFrame", "columns": list(obj.columns), "rows": len(rows)}
            print(f"[display] DataFrame {item['columns']}: {len(rows)} rows")
        elif kind == "Figure" and hasattr(obj, "savefig"):
            import io
            picture = io.BytesIO()
            obj.savefig(picture, format="png")
            titles = [axes.get_title() for axes in obj.get_axes()]
            item = {"kind": "Figure", "titles": titles, "png_bytes": len(picture.getvalue())}
            print(f"[display] figure {titles}")
        else:
            item = {"kind": kind, "text": str(obj)[:500]}
        self.items.append(item)


def run_pip(command: str) -> None:
    """A %pip cell: pip into this interpreter's environment, with torch held at the version installed."""
    import importlib
    import importlib.metadata as metadata

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        try:
            constraints.write(f"torch=={metadata.version('torch')}\n")
        except metadata.PackageNotFoundError:
            pass
    try:
        env = {**os.environ, "PIP_CONSTRAINT": constraints.name}
        subprocess.run([sys.executable, "-m", "pip", *shlex.split(command)[1:], "--disable-pip-version-check"],
                       check=True, env=env)
    finally:
        os.unlink(constraints.name)
    importlib.invalidate_caches()


def local_spark():
    """The cluster's SparkSession: local, two cores, quiet."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # a cluster's Python workers use the notebook's Python
    log4j = REPO / "penguin_lab" / "log4j2.properties"
    spark = (SparkSession.builder.master("local[2]").appName("databricks-driver")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def drive(notebook: Path, widgets: dict) -> dict:
    """Run the notebook's cells; returns the report."""
    report = {"cells": 0, "ran": [], "skipped_markdown": 0, "pip": [], "displayed": [], "exit": None, "error": None,
              "notebook_path": workspace_path(notebook), "widgets_given": sorted(widgets)}
    display = Display()
    report["displayed"] = display.items
    dbutils = DBUtils(widgets, report["notebook_path"])
    spark = local_spark()
    namespace = {"__name__": "__main__", "__builtins__": __builtins__, "spark": spark, "sc": spark.sparkContext,
                 "dbutils": dbutils, "display": display, "displayHTML": display}
    all_cells = cells(notebook.read_text())
    report["cells"] = len(all_cells)
    report["code_cells"] = [n for n, cell in enumerate(all_cells, start=1) if not (magic(cell) or "").startswith("%md")]
    try:
        for number, cell in enumerate(all_cells, start=1):
            command = magic(cell)
            if command is not None and command.startswith("%md"):
                report["skipped_markdown"] += 1
                continue
            started = time.perf_counter()
            if command is not None and command.startswith("%pip"):
                report["pip"].append(command)
                run_pip(command)
            elif command is not None:
                raise ValueError(f"cell {number}: {command.split()[0]} is not a magic this driver runs")
            else:
                exec(compile(cell, f"<{notebook.name} cell {number}>", "exec"), namespace)
            report["ran"].append({"cell": number, "seconds": round(time.perf_counter() - started, 2)})
    except NotebookExit as e:  # the cell that exits has run
        report["ran"].append({"cell": number, "seconds": round(time.perf_counter() - started, 2)})
        report["exit"] = str(e)
        print(f"Notebook exited: {e}")
    except BaseException as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        report["error"] = {"cell": number, "type": type(e).__name__, "message": first_line}
        traceback.print_exc()
    finally:
        report["widgets"] = dbutils.widgets.defined
        report["widget_values"] = {name: dbutils.widgets.given.get(name, w["default"])
                                   for name, w in dbutils.widgets.defined.items()}
        spark.stop()
    return report


def main(notebook: str, report_file: str, widgets: str) -> int:
    report = drive(Path(notebook), json.loads(widgets))
    Path(report_file).write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
