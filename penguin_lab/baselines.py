"""PenguinNet measured against simple baselines, seed by seed, on the very same splits.

One seed's test accuracy says little: the split and the initial weights both depend on it. A sweep
trains the network on many seeds and fits scikit-learn's LogisticRegression and RandomForestClassifier
on each seed's training rows, so that a network which learns worse than a linear model shows up.
scikit-learn is a development dependency (requirements-dev.txt), imported only here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import numpy as np

from .config import TrainConfig

NETWORK = "PenguinNet"
LAB_INPUTS = "PenguinNet, the lab's inputs"  # the same network on unstandardized inputs, when asked for
BASELINES = ("LogisticRegression", "RandomForestClassifier")


@dataclass
class SeedResult:
    seed: int
    accuracy: dict  # model name -> test accuracy
    final_train_loss: float


def baseline_inputs(prepared) -> tuple[np.ndarray, np.ndarray]:
    """Training and test inputs for the baselines: the island one-hot (a linear model must not read an
    island index as a quantity), then the four standardized measurements."""
    mean, std = prepared.standardization["IslandIdx"]
    islands = len(prepared.island_vocabulary)

    def inputs(x):
        index = np.rint(x[:, 0].astype(np.float64) * std + mean).astype(int)
        return np.column_stack([np.eye(islands)[index], x[:, 1:]])

    return inputs(prepared.x_train), inputs(prepared.x_test)


def baseline_accuracies(prepared, seed: int) -> dict:
    """Test accuracy of each baseline fitted on the prepared training rows."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = baseline_inputs(prepared)
    models = {"LogisticRegression": LogisticRegression(max_iter=1000),
              "RandomForestClassifier": RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)}
    return {name: float(model.fit(x_train, prepared.y_train).score(x_test, prepared.y_test))
            for name, model in models.items()}


def sweep(spark, penguins, seeds, config: TrainConfig = TrainConfig(), on_seed=None,
          lab_inputs: bool = False) -> list[SeedResult]:
    """Prepare, train and score the baselines for every seed; `on_seed(result)` hears of each as it ends.
    With `lab_inputs`, the network is also trained on the same split without standardized inputs."""
    from .data import prepare_splits
    from .pipeline import train_model

    results = []
    for seed in seeds:
        seeded = replace(config, seed=seed)
        prepared = prepare_splits(spark, penguins, seeded)
        _, history, _ = train_model(prepared, seeded)
        accuracy = {NETWORK: history.val_accuracy[-1], **baseline_accuracies(prepared, seed)}
        if lab_inputs:
            unstandardized = replace(seeded, standardize=False)
            accuracy[LAB_INPUTS] = train_model(prepare_splits(spark, penguins, unstandardized),
                                               unstandardized)[1].val_accuracy[-1]
        results.append(SeedResult(seed, accuracy, history.train_loss[-1]))
        if on_seed is not None:
            on_seed(results[-1])
    return results


def summary(results: list[SeedResult]) -> dict:
    """Per model: mean, standard deviation, minimum and maximum test accuracy over the seeds."""
    table = {}
    for name in (NETWORK, LAB_INPUTS, *BASELINES):
        if name not in results[0].accuracy:
            continue
        values = [r.accuracy[name] for r in results]
        table[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values),
                       "min": min(values), "max": max(values)}
    return table


def markdown_table(results: list[SeedResult]) -> str:
    seeds = [r.seed for r in results]
    lines = [f"Test accuracy over {len(seeds)} seeds ({seeds[0]} to {seeds[-1]}), the same splits for every model:",
             "", "| model | mean | std | min | max |", "| --- | --- | --- | --- | --- |"]
    for name, row in summary(results).items():
        lines.append(f"| {name} | {row['mean']:.4f} | {row['std']:.4f} | {row['min']:.4f} | {row['max']:.4f} |")
    return "\n".join(lines)
