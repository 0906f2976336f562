"""Score new penguins with a saved model: island by name, measurements in mm and g."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .artifacts import load_model
from .config import MEASUREMENTS
from .errors import LabError

# A value this far outside the training range (as a share of that range) gets a warning.
FAR_OUTSIDE = 0.5


class Predictor:
    def __init__(self, model_dir: Path):
        self.model, self.metadata = load_model(model_dir)
        self.islands = self.metadata["island_vocabulary"]
        self.species = self.metadata["species"]
        self.scale = self.metadata["scale"]

    def encode(self, island: str, measurements: dict) -> tuple[np.ndarray, list]:
        """One row of model inputs, plus warnings for values far from the training data."""
        if island not in self.islands:
            matches = [name for name in self.islands if name.lower() == str(island).strip().lower()]
            if len(matches) != 1:
                raise LabError(f"unknown island {island!r}; known islands: {', '.join(self.islands)}")
            island = matches[0]
        row, warnings = [float(self.islands.index(island))], []
        for name in MEASUREMENTS:
            value = measurements.get(name)
            if value is None:
                raise LabError(f"missing measurement {name}")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise LabError(f"{name}: {value!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise LabError(f"{name}: {value!r} must be a positive number")
            low, high = self.metadata.get("feature_ranges", {}).get(name, (None, None))
            if low is not None and not (low - FAR_OUTSIDE * (high - low) <= value <= high + FAR_OUTSIDE * (high - low)):
                warnings.append(f"{name} {value:g} is far outside the training range {low:g}..{high:g}; "
                                f"the prediction may be unreliable")
            row.append(value * float(self.scale[name]))
        return np.asarray(row, dtype=np.float32), warnings

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)).exp().numpy()

    def predict(self, island: str, **measurements) -> dict:
        """{'species', 'probabilities', 'warnings'} for one penguin."""
        x, warnings = self.encode(island, measurements)
        probs = self.probabilities(x)[0]
        return {"species": self.species[int(probs.argmax())],
                "probabilities": {name: float(p) for name, p in zip(self.species, probs)},
                "warnings": warnings}

    def predict_frame(self, frame) -> list[dict]:
        """Predictions for every complete row of a frame read by validate.read_penguins_csv."""
        results = []
        for record in frame.to_dict("records"):
            if record["Island"] is None or any(math.isnan(record[m]) for m in MEASUREMENTS):
                results.append({"row": int(record["Row"]), "species": None, "probabilities": {}, "warnings": ["incomplete row"]})
                continue
            try:
                result = self.predict(record["Island"], **{m: record[m] for m in MEASUREMENTS})
            except LabError as e:
                raise LabError(f"row {int(record['Row'])}: {e}") from None
            results.append({"row": int(record["Row"]), **result})
        return results
