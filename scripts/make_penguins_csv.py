"""Write data/penguins.csv in the lab's format from the palmerpenguins package's copy of the data.

Columns Island, CulmenLength, CulmenDepth, FlipperLength, BodyMass, Species; species as
0 Adelie, 1 Gentoo, 2 Chinstrap; missing values left empty; sex and year dropped.
Usage: python scripts/make_penguins_csv.py [OUT]   (default data/penguins.csv)
"""

import csv
import sys
from pathlib import Path

SPECIES_INDEX = {"Adelie": "0", "Gentoo": "1", "Chinstrap": "2"}
COLUMNS = [("island", "Island"), ("bill_length_mm", "CulmenLength"), ("bill_depth_mm", "CulmenDepth"),
           ("flipper_length_mm", "FlipperLength"), ("body_mass_g", "BodyMass")]


def source_csv() -> Path:
    import palmerpenguins

    return Path(palmerpenguins.__file__).parent / "data" / "penguins.csv"


def clean(value: str) -> str:
    if value == "NA":
        return ""
    if value.endswith(".0"):  # whole numbers as the lab writes them: 181, not 181.0
        return value[:-2]
    return value


def main(out: Path) -> None:
    with open(source_csv(), newline="") as f:
        rows = list(csv.DictReader(f))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([name for _, name in COLUMNS] + ["Species"])
        for row in rows:
            writer.writerow([clean(row[src]) for src, _ in COLUMNS] + [SPECIES_INDEX[row["species"]]])
    tmp.replace(out)
    print(f"wrote {len(rows)} penguins to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "data" / "penguins.csv")
