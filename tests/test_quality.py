"""How well the network learns: on many seeds, not only seed 0, and against a linear baseline on the same splits."""

import statistics

import pytest

from penguin_lab.baselines import NETWORK, baseline_inputs, markdown_table, summary, sweep
from penguin_lab.config import TrainConfig
from penguin_lab.read import read_penguins
from conftest import DATA

# Seed 9 is where the lab's unstandardized inputs stalled at 0.863.
SEEDS = range(10)


@pytest.fixture(scope="module")
def results(spark):
    return sweep(spark, read_penguins(spark, str(DATA)), SEEDS, TrainConfig())


def test_penguinnet_learns_on_every_seed_and_beats_logistic_regression(results):
    network = [r.accuracy[NETWORK] for r in results]
    linear = [r.accuracy["LogisticRegression"] for r in results]
    assert min(network) >= 0.97, markdown_table(results)
    assert statistics.fmean(network) >= statistics.fmean(linear), markdown_table(results)
    assert all(r.final_train_loss < 0.05 for r in results), [(r.seed, r.final_train_loss) for r in results]


def test_the_summary_is_the_seeds_own_figures(results):
    table = summary(results)
    values = [r.accuracy["RandomForestClassifier"] for r in results]
    assert table["RandomForestClassifier"] == {"mean": statistics.fmean(values), "std": statistics.pstdev(values),
                                               "min": min(values), "max": max(values)}
    assert "| PenguinNet |" in markdown_table(results)


def test_baselines_see_the_island_one_hot(spark, prepared):
    x_train, x_test = baseline_inputs(prepared)
    assert x_train.shape == (len(prepared.y_train), 3 + 4) and x_test.shape[1] == 7
    assert set(x_train[:, :3].sum(axis=1)) == {1.0}
    assert x_train[:, 3:].tolist() == prepared.x_train[:, 1:].tolist()


def test_the_labs_unstandardized_inputs_stall_on_seed_9(spark):
    """The lab's tip ("if the loss does not decrease, run the cell again") is about this: same split, same
    network, the lab's hand-scaled inputs."""
    penguins = read_penguins(spark, str(DATA))
    [result] = sweep(spark, penguins, [9], TrainConfig(), lab_inputs=True)
    assert result.accuracy["PenguinNet, the lab's inputs"] < 0.95 <= result.accuracy[NETWORK]
