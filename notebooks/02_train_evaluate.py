# Databricks notebook source
# MAGIC %md
# MAGIC # 2. Train and evaluate a PyTorch model
# MAGIC
# MAGIC With the data prepared by Spark (notebook 1), we define a small neural network in **PyTorch**, train it for
# MAGIC 100 epochs with the Adam optimizer, and look at how the loss fell and what the network learned.
# MAGIC PyTorch is already installed on Databricks Runtime ML clusters.

# COMMAND ----------

# MAGIC %pip install -q safetensors==0.8.0 tqdm

# COMMAND ----------

# Make the `penguin_lab` package importable: it sits in the repository root, the notebook folder's parent.
import os, sys
try:  # on Databricks, dbutils knows where this notebook is
    notebook_path = dbutils.notebook.entry_point.getDbutils().notebook().getContext().notebookPath().get()
    repo_root = os.path.dirname(os.path.dirname("/Workspace" + notebook_path))
except NameError:  # a local `python notebooks/...` run: this file is the notebook
    dbutils, repo_root = None, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, repo_root)

import torch

from penguin_lab import notebook, train
from penguin_lab.config import TrainConfig
from penguin_lab.data import prepare_splits
from penguin_lab.evaluate import plot_loss, weights_report
from penguin_lab.model import PenguinNet
from penguin_lab.pipeline import run_metrics, train_model, write_run
from penguin_lab.read import read_penguins
from penguin_lab.spark import get_spark
from penguin_lab.tracking import Tracking, run_params

params = notebook.parameters(dbutils)
config = TrainConfig(epochs=params["epochs"], seed=params["seed"])
print("PyTorch", torch.__version__, "| device:", train.pick_device())

# COMMAND ----------

# MAGIC %md
# MAGIC ## The prepared data
# MAGIC
# MAGIC The same Spark reading, preparation and split as in notebook 1 (same seed, same rows).

# COMMAND ----------

spark = get_spark()
penguins = read_penguins(spark, params["data_path"], drop_invalid=params["drop_invalid"])
prepared = prepare_splits(spark, penguins, config)
print(f"Training set: {prepared.counts['train_rows']} rows, test set: {prepared.counts['test_rows']} rows")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The neural network
# MAGIC
# MAGIC Three fully connected layers:
# MAGIC
# MAGIC - an input layer takes the 5 features (island index and 4 measurements) and produces 10 outputs;
# MAGIC - a hidden layer takes those 10 and produces 10;
# MAGIC - an output layer produces one score per species (3).
# MAGIC
# MAGIC `forward` applies ReLU after the first two layers and returns `log_softmax` of the last one: a
# MAGIC log-probability per species. The class is in `penguin_lab/model.py`:

# COMMAND ----------

notebook.show_source(PenguinNet)
print(PenguinNet())

# COMMAND ----------

# MAGIC %md
# MAGIC ## Loading data in batches, training and testing
# MAGIC
# MAGIC Each epoch feeds all the training rows through the network in batches of 20, measures the loss, and lets
# MAGIC the optimizer adjust the weights by backpropagation; then it measures loss and accuracy on the test rows,
# MAGIC which the network never trains on. The loop is in `penguin_lab/train.py`. Compared with the original lab:
# MAGIC
# MAGIC - the data loader slices batches in this process: the lab's `num_workers=1` started a new worker process
# MAGIC   on every pass, which made training about 20 times slower;
# MAGIC - every batch is moved to the model's device (`.to(device)`): the lab moved only the model, which fails on a GPU;
# MAGIC - the training rows are shuffled each epoch, with a seeded generator, so runs repeat exactly.

# COMMAND ----------

notebook.show_source(train.make_loader)
notebook.show_source(train.train_one_epoch)
notebook.show_source(train.evaluate)
notebook.show_source(train.fit)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Track the run with MLflow
# MAGIC
# MAGIC Every run is an MLflow run: the settings as parameters, then the loss and accuracy of every epoch *while it
# MAGIC trains*, and at the end the counts, the plots and the model. On Databricks it goes to this notebook's
# MAGIC experiment (the flask icon on the right); locally to `mlflow.db` beside the results folder, which
# MAGIC `make ui` shows. Set the `tracking` widget to false to train without it.

# COMMAND ----------

results = notebook.output_path(params)
tracking = Tracking(params["tracking"], results.resolve().parent)
tracking.start("notebook 2: train and evaluate", run_params(config, params["data_path"]))
print("MLflow run", tracking.run_id, "in", tracking.uri)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Train the model
# MAGIC
# MAGIC `train_model` puts it together: seeds, loaders, `PenguinNet`, Adam with learning rate 0.001, and `fit` for
# MAGIC the number of epochs in the `epochs` widget (100 by default). Each epoch's figures go to MLflow as it ends.

# COMMAND ----------

notebook.show_source(train_model)
model, history, train_seconds = train_model(prepared, config, on_epoch=tracking.epoch)
for epoch in sorted({1, 2, *range(10, config.epochs + 1, 10), config.epochs}):
    print(f"epoch {epoch:>3}: training loss {history.train_loss[epoch - 1]:.4f}, "
          f"validation loss {history.val_loss[epoch - 1]:.4f}, accuracy {history.val_accuracy[epoch - 1]:.3f}")
print(f"{config.epochs} epochs in {train_seconds:.2f} s")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Review training and validation loss
# MAGIC
# MAGIC The loss should fall epoch after epoch, and the training and validation curves should follow each other:
# MAGIC if validation loss rose while training loss kept falling, the model would be overfitting.

# COMMAND ----------

figure = plot_loss(history)
notebook.show_figure(figure)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The learned weights and biases
# MAGIC
# MAGIC `fc1` has 10 x 5 weights and 10 biases, `fc2` 10 x 10 and 10, `fc3` 3 x 10 and 3.

# COMMAND ----------

print(weights_report(model))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Save the run
# MAGIC
# MAGIC The metrics, the plots (loss, accuracy, and the test set's confusion matrix), the weights and the model go
# MAGIC to the `output_dir` widget's folder, all at once: they are written to a temporary folder that is renamed
# MAGIC into place only when everything is there. Notebook 3 loads the model from there. The same files and the
# MAGIC model, as an MLflow model with no pickle inside, complete the MLflow run; with the `register_model` widget
# MAGIC set (a Unity Catalog name such as `main.default.penguin_classifier`), the model is also registered.

# COMMAND ----------

metrics = run_metrics(prepared, history, train_seconds, config, penguins.summary.invalid_rows,
                      penguins.repeated_header_rows)
metrics["data"] = params["data_path"]
metrics.update(tracking.reference())
write_run(results, model, prepared, history, metrics)
registered = tracking.finish(results, metrics, params["register_model"])
print(f"test accuracy {metrics['test_accuracy']:.4f}; results in {params['output_dir']}"
      + (f"; registered as {registered}" if registered else ""))
