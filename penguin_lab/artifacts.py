"""Saving and loading results: whole folders appear at once, and models load without pickle.

A saved model is a folder with model.safetensors (the weights: plain tensors, no code) and
model.json (everything needed to predict: feature order, island vocabulary, scaling, species
names, versions, metrics, and the weights' SHA-256). torch.load would unpickle, and a pickle
can run any code, so nothing here ever calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .config import FEATURES, SCALE, SPECIES
from .errors import LabError

MODEL_FORMAT = "penguin-lab-model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "model.json"
_MAX_METADATA_BYTES = 1 << 20


@contextlib.contextmanager
def staged_dir(final: Path):
    """Yield an empty temporary folder beside `final`; on success it replaces `final` in one rename.

    On any error the temporary folder is removed, so a failed or interrupted run never leaves a
    half-written folder under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_dir(source: Path, final: Path) -> None:
    """Move `source` to `final`, replacing a previous `final` folder (renames only)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / "x")
    os.replace(source, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model, folder: Path, island_vocabulary: list, feature_ranges: dict | None = None,
               metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write model.safetensors and model.json into `folder` (created)."""
    import safetensors
    import torch
    from safetensors.torch import save_file

    from . import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": {"n_features": model.fc1.in_features, "hidden_units": model.fc1.out_features,
                         "n_classes": model.fc3.out_features},
        "features": FEATURES,
        "island_vocabulary": list(island_vocabulary),
        "scale": SCALE,
        "species": SPECIES,
        "feature_ranges": feature_ranges or {},
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "versions": {"penguin_lab": __version__, "torch": torch.__version__.split("+")[0],
                     "safetensors": safetensors.__version__},
        "metrics": metrics or {},
        **(extra or {}),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def _looks_like_pickle(path: Path) -> bool:
    head = path.read_bytes()[:4] if path.is_file() else b""
    return head[:1] == b"\x80" or head[:2] == b"PK"  # pickle protocol 2+ or torch.save's zip


def read_metadata(folder: Path) -> dict:
    folder = Path(folder)
    if folder.is_file():
        kind = "a pickle / torch.save file" if _looks_like_pickle(folder) else "a file"
        raise LabError(f"{folder}: is {kind}; expected a penguin-lab model folder "
                       f"({METADATA_FILE} + {WEIGHTS_FILE}). Pickles are never loaded: they can run code")
    if not folder.is_dir():
        raise LabError(f"{folder}: no such model folder")
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise LabError(f"{folder}: missing {METADATA_FILE}; not a penguin-lab model folder")
    if meta_path.stat().st_size > _MAX_METADATA_BYTES:
        raise LabError(f"{meta_path}: too large for model metadata")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabError(f"{meta_path}: not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        raise LabError(f"{meta_path}: not penguin-lab model metadata (expected \"format\": \"{MODEL_FORMAT}\")")
    if metadata.get("format_version") != MODEL_FORMAT_VERSION:
        raise LabError(f"{meta_path}: format_version {metadata.get('format_version')!r} is not supported "
                       f"(expected {MODEL_FORMAT_VERSION})")
    for key, kind in (("architecture", dict), ("island_vocabulary", list), ("scale", dict), ("species", list),
                      ("tensors", dict), ("weights_sha256", str), ("features", list)):
        if not isinstance(metadata.get(key), kind):
            raise LabError(f"{meta_path}: field {key!r} is missing or not a {kind.__name__}")
    return metadata


def load_model(folder: Path):
    """Load a saved model folder; returns (model in eval mode, metadata). Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import PenguinNet

    folder = Path(folder)
    metadata = read_metadata(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise LabError(f"{folder}: missing {WEIGHTS_FILE}")
    if sha256_file(weights) != metadata["weights_sha256"]:
        raise LabError(f"{weights}: SHA-256 does not match {METADATA_FILE}; the weights are corrupted or were replaced")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise LabError(f"{weights}: not a readable safetensors file ({e})") from None
    expected = {k: list(v) for k, v in metadata["tensors"].items()}
    found = {k: list(v.shape) for k, v in state.items()}
    if found != expected:
        raise LabError(f"{weights}: tensors {found} do not match {METADATA_FILE} {expected}")
    arch = metadata["architecture"]
    try:
        model = PenguinNet(int(arch["n_features"]), int(arch["hidden_units"]), int(arch["n_classes"]))
    except (KeyError, TypeError, ValueError):
        raise LabError(f"{folder / METADATA_FILE}: architecture {arch} is not a PenguinNet") from None
    wanted = {k: list(v.shape) for k, v in model.state_dict().items()}
    if found != wanted:
        raise LabError(f"{weights}: tensors {found} do not fit PenguinNet{tuple(arch.values())} {wanted}")
    if len(metadata["species"]) != model.fc3.out_features or len(metadata["features"]) != model.fc1.in_features:
        raise LabError(f"{folder / METADATA_FILE}: species or features do not match the network's shape")
    model.load_state_dict(state)
    model.eval()
    return model, metadata
