"""Score new penguins with a saved model: island by name, measurements in mm and g."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

from .artifacts import load_model
from .config import FEATURES, ISLAND, MEASUREMENTS
from .errors import LabError
from .validate import MISSING, check_measurement, expected_measurement, parse_number, short

# A value this far outside the training range (as a share of that range) gets a warning.
FAR_OUTSIDE = 0.5


class InputError(LabError):
    """A bad prediction input. `column` and `detail` let a CSV caller put the file and row in front."""

    def __init__(self, column: str, detail: str):
        super().__init__(f"{column}: {detail}")
        self.column, self.detail = column, detail


def measurement_value(name: str, value) -> float:
    """A measurement as a float: a number, or text such as '39.1' (or '39,1'); InputError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in MISSING):
        raise InputError(name, f"missing; expected {expected_measurement(name)}")
    if isinstance(value, str):
        try:
            number = parse_number(value.strip(), decimal_comma=True)
        except ValueError:
            raise InputError(name, f"{short(value)} is not a number; expected {expected_measurement(name)}") from None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InputError(name, f"{short(repr(value))} is not a number; expected {expected_measurement(name)}")
    if math.isnan(number):
        raise InputError(name, f"NaN is not a measurement; expected {expected_measurement(name)}")
    if not check_measurement(number):
        raise InputError(name, f"{number:g} is not a possible measurement; expected {expected_measurement(name)}")
    return number


class Predictor:
    def __init__(self, model_dir: Path):
        self.model, self.metadata = load_model(model_dir)
        self.islands = self.metadata["island_vocabulary"]
        self.species = self.metadata["species"]
        self.scale = self.metadata["scale"]
        moments = [self.metadata["standardization"][f] for f in FEATURES]
        self.mean, self.std = (np.array(column, dtype=np.float64) for column in zip(*moments))

    def standardized(self, x: np.ndarray) -> np.ndarray:
        """Hand-scaled inputs (float32) as the network was trained on them: (x - mean) / std per feature,
        in double and then float, exactly as data.standardize writes the prepared sets."""
        return ((np.asarray(x, dtype=np.float32).astype(np.float64) - self.mean) / self.std).astype(np.float32)

    def island_index(self, island) -> int:
        """The model's number for an island name (exact, or the one name that matches ignoring case)."""
        if island in self.islands:
            return self.islands.index(island)
        text = str(island).strip() if island is not None else ""
        matches = [i for i, name in enumerate(self.islands) if name.lower() == text.lower()]
        if len(matches) != 1:
            what = "missing" if not text else f"unknown island {short(text)}"
            raise InputError(ISLAND, f"{what}; expected one of {', '.join(self.islands)}")
        return matches[0]

    def encode(self, island: str, measurements: dict) -> tuple[np.ndarray, list]:
        """One row of model inputs, plus warnings for values far from the training data."""
        row, warnings = [float(self.island_index(island))], []
        ranges = self.metadata.get("feature_ranges", {})
        for name in MEASUREMENTS:
            value = measurement_value(name, measurements.get(name))
            if name in ranges:
                low, high = ranges[name]
                margin = FAR_OUTSIDE * (high - low)
                if not low - margin <= value <= high + margin:
                    warnings.append(f"{name} {value:g} is far outside the training range {low:g}..{high:g}; "
                                    f"the prediction may be unreliable")
            row.append(value * float(self.scale[name]))
        return self.standardized(row), warnings

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

    def predict_frame(self, frame, where: str = "data", drop_invalid: bool = False) -> list[dict]:
        """Predictions for every complete row of a frame read by validate.read_penguins_csv.

        A row this model cannot score (an island it does not know) is an error naming `where`, the
        row and the column, or with drop_invalid a result without a species and with a warning.
        """
        results = []
        for record in frame.to_dict("records"):
            row = int(record["Row"])
            if record[ISLAND] is None or any(math.isnan(record[m]) for m in MEASUREMENTS):
                results.append({"row": row, "species": None, "probabilities": {}, "warnings": ["incomplete row"]})
                continue
            try:
                result = self.predict(record[ISLAND], **{m: record[m] for m in MEASUREMENTS})
            except InputError as e:
                if not drop_invalid:
                    raise LabError(f"{where}: row {row}, column {e.column!r}: {e.detail}") from None
                result = {"species": None, "probabilities": {}, "warnings": [f"dropped: {e}"]}
            results.append({"row": row, **result})
        return results


def score_columns(predictor: Predictor, codes: np.ndarray, spellings: list, measurements: list) -> tuple:
    """The model's verdict on a batch of penguins, given as columns: `codes` index `spellings` (the batch's
    distinct island spellings, -1 where the island is missing) and `measurements` holds one float array per
    MEASUREMENTS column (NaN where missing).

    Returns (probabilities, why, reasons): probabilities per row and species (NaN where not scored); `why`
    is, per row, -1 where scored, or the index in `reasons` of the first thing that stops it being scored.
    Each distinct island spelling is looked up once: a batch has a handful, however many rows."""
    import torch

    reasons = [f"{ISLAND}: missing"] + [
        f"{name}: missing, not a number or not a possible measurement; expected {expected_measurement(name)}"
        for name in MEASUREMENTS]
    island, why_island = np.full(len(spellings) + 1, np.nan), np.full(len(spellings) + 1, 0)  # last: missing
    for i, spelling in enumerate(spellings):
        found = _island_or_reason(predictor, spelling)
        if isinstance(found, int):
            island[i], why_island[i] = found, -1
        else:
            why_island[i] = len(reasons)
            reasons.append(found)
    why = why_island[codes]
    columns = [island[codes]]
    for number, (name, values) in enumerate(zip(MEASUREMENTS, measurements), start=1):
        why[~check_measurement(values) & (why < 0)] = number
        columns.append(values * float(predictor.scale[name]))
    good = why < 0
    probabilities = np.full((len(why), len(predictor.species)), np.nan)
    if good.any():
        scored = slice(None) if good.all() else good  # the usual batch: every row, none copied out first
        x = predictor.standardized(np.column_stack(columns)[scored])
        with torch.no_grad():
            probabilities[scored] = predictor.model(torch.from_numpy(x)).exp().numpy()
    return probabilities, why, reasons


def score_table(predictor: Predictor, frame):
    """Species and probabilities for a pandas frame of penguins (Island and the measurements), in one pass.

    Returns a frame of `predicted_species`, one `p_<species>` per species and `reason`: a row the model
    cannot score (missing or impossible values, an island it does not know) gets no species and says
    why, so a batch never fails because of one row."""
    import pandas as pd

    codes, spellings = pd.factorize(frame[ISLAND].astype(object), use_na_sentinel=True)
    measurements = [pd.to_numeric(frame[name], errors="coerce").astype("float64").to_numpy() for name in MEASUREMENTS]
    probabilities, why, reasons = score_columns(predictor, codes, list(spellings), measurements)
    good = why < 0
    predicted = np.full(len(why), None, dtype=object)
    predicted[good] = np.asarray(predictor.species, dtype=object)[probabilities[good].argmax(axis=1)]
    result = {"predicted_species": predicted}
    result.update({f"p_{name}": probabilities[:, i] for i, name in enumerate(predictor.species)})
    result["reason"] = np.array([*reasons, None], dtype=object)[why]  # -1, scored, is the last: None
    return pd.DataFrame(result, index=frame.index)


def _island_or_reason(predictor: Predictor, spelling) -> int | str:
    try:
        return predictor.island_index(spelling)
    except InputError as e:
        return str(e)
