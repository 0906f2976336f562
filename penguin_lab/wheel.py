"""The project as a wheel: the same code that runs locally, packaged for a Databricks cluster.

The wheel is built from a copy of the files it needs, so the checkout gets no build/ or egg-info
folders, and with a fixed timestamp, so the same code gives the same bytes and the same digest:
the upload path names both the version and the digest, and two versions never overwrite each other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from penguin_lab.errors import LabError

# What the wheel is built from (pyproject.toml names the packages and the data file it holds).
BUILD_INPUTS = ["pyproject.toml", "penguin_lab", "data/penguins.csv"]
# Zip entries dated 1980-01-01: the earliest a zip file can hold; the same code gives the same wheel.
FIXED_TIMESTAMP = "315532800"


@dataclass(frozen=True)
class Wheel:
    path: Path
    version: str
    sha256: str

    @property
    def folder_name(self) -> str:
        """The upload folder's name: the version and the digest's first 12 hex digits."""
        return f"{self.version}-{self.sha256[:12]}"


def build_wheel(source_root: Path, out_dir: Path) -> Wheel:
    """Build the wheel of the project at source_root into out_dir, without dependencies or network."""
    source_root, out_dir = Path(source_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="penguin-lab-wheel-") as staging_name:
        staging = Path(staging_name) / "src"
        for relative in BUILD_INPUTS:
            source = source_root / relative
            if not source.exists():
                raise LabError(f"cannot build the wheel: {source} is missing (run from the repository's root)")
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target)
        built = Path(staging_name) / "dist"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                   "--wheel-dir", str(built), str(staging)]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "SOURCE_DATE_EPOCH": FIXED_TIMESTAMP})
        wheels = sorted(built.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
            if "setuptools" in done.stderr:  # built with this environment's setuptools, not a downloaded one
                reason += " (the build needs setuptools in this environment: pip install 'setuptools>=68')"
            raise LabError(f"building the wheel failed: {reason}")
        path = out_dir / wheels[0].name
        shutil.copyfile(wheels[0], path)
    version = path.name.split("-")[1]
    return Wheel(path=path, version=version, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
