# Databricks notebook source
# MAGIC %md
# MAGIC # 5. Distributed training with TorchDistributor
# MAGIC
# MAGIC Notebook 4 spread the training over several processes with Horovod, as the lab does. Databricks has since
# MAGIC deprecated Horovod and HorovodRunner (they are not in Databricks Runtime 16.0 ML and later) and recommends
# MAGIC **TorchDistributor** (`pyspark.ml.torch.distributor`, part of Apache Spark since 3.4) with PyTorch's own
# MAGIC **DistributedDataParallel** (DDP). This notebook trains the same model that way. It runs on Databricks Runtime
# MAGIC 15.4 LTS ML and newer, including 16.x and later, and on your own machine with `pyspark`: no Horovod needed.
# MAGIC
# MAGIC TorchDistributor starts the processes in one of two ways:
# MAGIC
# MAGIC - `local_mode=True`: on the driver, the machine running this notebook;
# MAGIC - `local_mode=False`: as Spark barrier tasks on the cluster's workers, all started together. On your own
# MAGIC   machine the local Spark (`local[2]`) runs them in its executor, so this path works there too.
# MAGIC
# MAGIC `use_gpu=True` gives each process a GPU; it is only set when there is one. Without a GPU the processes
# MAGIC talk over **gloo**; with GPUs, over **nccl**.

# COMMAND ----------

# Make the `penguin_lab` package importable: it sits in the repository root, the parent of this notebook's
# folder (on Databricks the working directory; in a local `python notebooks/...` run, __file__'s folder).
# PYTHONPATH carries it to the training processes this notebook starts on this machine.
import os, shutil, sys
notebook_folder = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
repo_root = os.path.dirname(notebook_folder)
sys.path.insert(0, repo_root)
dbutils = globals().get("dbutils")  # Databricks gives a notebook its dbutils; a local run has none
from penguin_lab import notebook
notebook.require(dbutils, "torch")  # a runtime without PyTorch (not an ML runtime) stops here, in one line
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)

import torch
from pyspark.ml.torch.distributor import TorchDistributor

from penguin_lab.artifacts import load_model
from penguin_lab.config import TrainConfig
from penguin_lab.data import prepare
from penguin_lab.distributed import DistributedJob, gpu_available, torch_rank_main, workers_import_this_package
from penguin_lab.pipeline import write_plots
from penguin_lab.predict import Predictor
from penguin_lab.read import read_penguins
from penguin_lab.spark import get_spark
from penguin_lab.tracking import log_run, run_params
from penguin_lab.train import History, evaluate, make_dataset, make_loader

params = notebook.parameters(dbutils)
spark = get_spark()
print(params)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The data
# MAGIC
# MAGIC The same preparation as notebook 1: Spark checks, cleans, encodes and scales the rows, then splits them into
# MAGIC a training set and a test set with no penguin on both sides, written as Parquet. The training processes read
# MAGIC that Parquet themselves, so it goes in the results folder, which every node must be able to read (on
# MAGIC Databricks a path under `/dbfs` or `/Volumes`, as the default `/dbfs/tmp/penguin-lab`; on a cluster without
# MAGIC `/dbfs` the default is the driver's `/tmp/penguin-lab`, which the processes of a single-node cluster share).

# COMMAND ----------

config = TrainConfig(epochs=params["epochs"], seed=params["seed"])
prepared_dir = notebook.output_path(params) / "torch" / "prepared"
shutil.rmtree(prepared_dir, ignore_errors=True)  # a rerun replaces the previous run's data
penguins = read_penguins(spark, params["data_path"], drop_invalid=params["drop_invalid"])
prepared = prepare(spark, penguins, config, prepared_dir)
print(prepared.counts)
print("training set:", prepared.train_path)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The training function
# MAGIC
# MAGIC Every process runs this function. It is the single-node model (`PenguinNet`) and training loop (`fit`, the
# MAGIC same function notebook 2 uses), with what DDP needs around them:
# MAGIC
# MAGIC - `init_process_group` joins the other processes (TorchDistributor sets `RANK`, `WORLD_SIZE` and the
# MAGIC   address to meet at), with gloo on CPU or nccl on GPU, and a timeout so a process whose peer died does not
# MAGIC   wait forever;
# MAGIC - each rank reads its own share of the prepared Parquet (`training_batches`: a `DistributedSampler` over the
# MAGIC   whole set when it fits in memory, else its own row groups), reshuffled before every epoch;
# MAGIC - `DistributedDataParallel` copies rank 0's weights to every rank, then averages the gradients of all ranks
# MAGIC   during `backward()`, so every rank takes the same step;
# MAGIC - the learning rate is multiplied by the number of processes: each step now averages that many batches;
# MAGIC - at the end every rank computes a checksum of its weights and they are gathered, so we can check that all ranks
# MAGIC   ended with exactly the same model; rank 0 tests it and saves it (into a temporary folder, renamed into place
# MAGIC   when complete). Every rank returns the same result, because in local mode TorchDistributor returns the value
# MAGIC   of whichever process finishes last.
# MAGIC
# MAGIC The job sent to every process holds the paths of the prepared Parquet and the settings, not the data.
# MAGIC
# MAGIC On a cluster with worker nodes, the processes there must import `penguin_lab` as well: install this repository
# MAGIC as a notebook-scoped library first (for example `%pip install /Workspace/<path to this repository>`), and keep
# MAGIC the results folder, with the prepared Parquet, on storage every node sees (the default `/dbfs/tmp/penguin-lab`).

# COMMAND ----------

notebook.show_source(torch_rank_main)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2 processes on the driver (`local_mode=True`)

# COMMAND ----------

def report(result):
    print(f"{result['world_size']} processes, {result['epochs']} epochs in {result['train_seconds']:.1f} s, "
          f"test accuracy {result['test_accuracy']:.3f}")
    for rank, checksum in enumerate(result["rank_checksums"]):
        print(f"rank {rank} weights sha256 {checksum}")
    assert result["world_size"] == 2 and len(set(result["rank_checksums"])) == 1, "ranks ended with different weights"


local_dir = notebook.output_path(params) / "torch-local" / "model"
job = DistributedJob.from_prepared(prepared, config, model_dir=local_dir)
distributor = TorchDistributor(num_processes=2, local_mode=True, use_gpu=torch.cuda.is_available())
local_result = distributor.run(torch_rank_main, job)
report(local_result)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2 Spark barrier tasks (`local_mode=False`)
# MAGIC
# MAGIC The same function, now started by Spark: TorchDistributor runs a barrier stage of 2 tasks, and each task
# MAGIC starts one training process. This needs 2 free task slots (on your machine the local Spark has 2). Spark's
# MAGIC Python workers do not see this notebook's `sys.path`, so `workers_import_this_package` puts the repository on
# MAGIC their `PYTHONPATH` for the call. On CPU, with the same seed, the weights come out the same as with
# MAGIC `local_mode=True`.

# COMMAND ----------

barrier_dir = notebook.output_path(params) / "torch-barrier" / "model"
job = DistributedJob.from_prepared(prepared, config, model_dir=barrier_dir)
distributor = TorchDistributor(num_processes=2, local_mode=False, use_gpu=gpu_available(spark, local_mode=False))
with workers_import_this_package(spark):
    barrier_result = distributor.run(torch_rank_main, job)
report(barrier_result)
print("same weights as local mode:", barrier_result["rank_checksums"][0] == local_result["rank_checksums"][0])

# COMMAND ----------

# MAGIC %md
# MAGIC ## Load the model saved by rank 0 and test it

# COMMAND ----------

test_loader = make_loader(make_dataset(prepared.x_test, prepared.y_test), batch_size=config.batch_size)
runs = (("local mode", local_dir, local_result), ("barrier tasks", barrier_dir, barrier_result))
for name, model_dir, result in runs:
    test_model, _ = load_model(model_dir)
    test_loss, test_accuracy = (t.item() for t in evaluate(test_model, test_loader, "cpu"))
    print(f"{name}: test loss {test_loss:.4f}, accuracy {test_accuracy:.3f} "
          f"on {len(prepared.y_test)} held-out penguins")
    assert abs(test_accuracy - result["test_accuracy"]) < 1e-6

# COMMAND ----------

# The lab's new penguin [[1, 50.4, 15.3, 20, 50]]: Biscoe, culmen 50.4 mm x 15.3 mm, flipper 200 mm, 5000 g.
prediction = Predictor(local_dir).predict("Biscoe", CulmenLength=50.4, CulmenDepth=15.3,
                                          FlipperLength=200, BodyMass=5000)
print("Prediction:", prediction["species"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## Log the run to MLflow, once, from the driver
# MAGIC
# MAGIC The ranks do not log: when they have finished, this driver logs the run's settings, every epoch's figures
# MAGIC from rank 0, the counts, the plots and rank 0's model, as one MLflow run (torch, 2 processes).

# COMMAND ----------

write_plots(local_dir.parent, load_model(local_dir)[0], History(**local_result["history"]), prepared.test_path)
log_run("notebook 5: TorchDistributor", run_params(config, params["data_path"], "torch", 2), local_result["history"],
        {**prepared.counts, **local_result}, local_dir.parent, params["register_model"], params["tracking"])
