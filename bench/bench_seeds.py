"""How well PenguinNet learns on every seed, against LogisticRegression and a random forest on the same splits.

    python bench/bench_seeds.py [--seeds 20] [--first 0] [--epochs 100] [--data data/penguins.csv] [--no-lab-inputs]

For each seed: the lab's settings (100 epochs, batch 20, Adam at 0.001, a 70/30 stratified split), the
seed's own split and initial weights, then both baselines fitted on that seed's training rows, and the
network once more on the same split with the lab's unstandardized inputs, for comparison. Prints one
line per seed and the table of mean, standard deviation, minimum and maximum test accuracy.
Goals over 20 seeds: PenguinNet's minimum is at least 0.98 and its mean at least 0.995.
"""

from __future__ import annotations

import argparse
import time

from penguin_lab.baselines import BASELINES, LAB_INPUTS, NETWORK, markdown_table, summary, sweep
from penguin_lab.config import DEFAULT_DATA, TrainConfig
from penguin_lab.read import read_penguins
from penguin_lab.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (default 20)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--no-lab-inputs", action="store_true", help="skip the network on the lab's inputs")
    args = parser.parse_args()

    started = time.perf_counter()
    spark = get_spark()
    penguins = read_penguins(spark, args.data)
    names = (NETWORK, *BASELINES) if args.no_lab_inputs else (NETWORK, LAB_INPUTS, *BASELINES)
    print("seed  " + "  ".join(f"{name:>28}" for name in names) + "  final train loss")

    def report(result):
        print(f"{result.seed:>4}  " + "  ".join(f"{result.accuracy[name]:>28.4f}" for name in names)
              + f"  {result.final_train_loss:.4f}", flush=True)

    results = sweep(spark, penguins, range(args.first, args.first + args.seeds),
                    TrainConfig(epochs=args.epochs), on_seed=report, lab_inputs=not args.no_lab_inputs)
    print()
    print(markdown_table(results))
    network = summary(results)[NETWORK]
    seed0 = [r.accuracy[NETWORK] for r in results if r.seed == 0]
    print()
    print(f"goal: minimum >= 0.98: {'met' if network['min'] >= 0.98 else 'NOT met'} ({network['min']:.4f})")
    print(f"goal: mean >= 0.995: {'met' if network['mean'] >= 0.995 else 'NOT met'} ({network['mean']:.4f})")
    if seed0:
        print(f"goal: seed 0 >= 0.98: {'met' if seed0[0] >= 0.98 else 'NOT met'} ({seed0[0]:.4f})")
    print(f"{len(results)} seeds in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
