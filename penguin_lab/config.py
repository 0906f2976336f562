"""Every setting of the lab in one place."""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The checkout's data, or, in an installed wheel (as on a Databricks job cluster), the copy it ships.
DEFAULT_DATA = REPO_ROOT / "data" / "penguins.csv"
if not DEFAULT_DATA.is_file() and (Path(sys.prefix) / "share" / "penguin-lab" / "penguins.csv").is_file():
    DEFAULT_DATA = Path(sys.prefix) / "share" / "penguin-lab" / "penguins.csv"

# The CSV's columns, found by name. Island is a category; the four measurements are numbers.
ISLAND = "Island"
MEASUREMENTS = ["CulmenLength", "CulmenDepth", "FlipperLength", "BodyMass"]
LABEL = "Species"
REQUIRED_COLUMNS = [ISLAND, *MEASUREMENTS, LABEL]

# Model inputs, in order. Flipper length and body mass are scaled as in the lab so that
# all four measurements are of a similar size (tens of units).
FEATURES = ["IslandIdx", "CulmenLength", "CulmenDepth", "FlipperScaled", "MassScaled"]
SCALE = {"CulmenLength": 1.0, "CulmenDepth": 1.0, "FlipperLength": 0.1, "BodyMass": 0.01}


def no_standardization() -> dict:
    """[mean, std] = [0, 1] for every feature: the inputs as they are (the lab's, and models saved before)."""
    return {feature: [0.0, 1.0] for feature in FEATURES}


# Label index -> species name, as in the lab's data file.
SPECIES = ["Adelie", "Gentoo", "Chinstrap"]


@dataclass(frozen=True)
class TrainConfig:
    """What a training run may vary. Defaults are the lab's."""

    epochs: int = 100
    batch_size: int = 20
    learning_rate: float = 0.001
    hidden_units: int = 10
    test_fraction: float = 0.30
    seed: int = 0
    # The lab copies every row 4 times to make epochs longer. Copies go to training only.
    oversample: int = 1
    # Standardize the inputs with the training rows' mean and std (data.standardization). False feeds the
    # network the lab's hand-scaled values, as the lab did: for comparison (bench/bench_seeds.py).
    standardize: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


# Training data whose feature and label arrays take more bytes than this (64 MiB: about 2.4 million
# penguins) is streamed from its Parquet folder (penguin_lab.batches) instead of loaded whole, so the
# driver's memory stays flat however large the data. Streaming is as fast as the arrays in memory.
# Read once, at import; set PENGUIN_LAB_TRAIN_MEMORY_BYTES to change it for a run.
import os  # noqa: E402  (kept with the setting it serves)

TRAIN_MEMORY_BUDGET_BYTES = int(os.environ.get("PENGUIN_LAB_TRAIN_MEMORY_BYTES", 64 << 20))

# Row groups of the Parquet penguin-lab writes (prepared sets, scored records): training streams a large set
# one group at a time, so small groups keep its memory the same at any size.
ROW_GROUP_BYTES = 8 << 20
