# Databricks notebook source
# MAGIC %md
# MAGIC # 4. Distributed training with Horovod
# MAGIC
# MAGIC The model so far was trained by one process. When there is much more data to pass through a network,
# MAGIC training can be spread over several processes (several CPU cores or GPUs, on one or more nodes). The lab
# MAGIC does this with **Horovod**, an open-source library for distributed deep learning, started from the notebook
# MAGIC by **HorovodRunner**.
# MAGIC
# MAGIC > **Deprecated.** Databricks has deprecated Horovod and HorovodRunner: they ship with Databricks Runtime ML up
# MAGIC > to **15.4 LTS ML** and are not in 16.0 ML and later, and the upstream lab dropped this section in 2024.
# MAGIC > Databricks now recommends **TorchDistributor**, which notebook 5 uses for the same training. Run this notebook
# MAGIC > on Databricks Runtime 15.4 LTS ML or older, or on your own machine after `make horovod` (which builds Horovod
# MAGIC > for this project's PyTorch; see `docs/distributed.md`).
# MAGIC > On a newer runtime, the first cell stops the notebook and says so.
# MAGIC
# MAGIC How it works: every process runs the same training function on its own share of the training rows. After
# MAGIC each batch, Horovod averages the gradients of all processes, so every process takes the same step and all
# MAGIC of them end with the same weights. Process 0 ("rank 0") then tests the model and saves it.

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
# sparkdl's HorovodRunner on Databricks Runtime ML 15.4 LTS and older; without Horovod, the notebook stops here.
HorovodRunner = notebook.horovod_runner(dbutils)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)

from penguin_lab.artifacts import load_model
from penguin_lab.config import TrainConfig
from penguin_lab.data import prepare
from penguin_lab.distributed import DistributedJob, horovod_rank_main, workers_import_this_package
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
prepared_dir = notebook.output_path(params) / "horovod" / "prepared"
shutil.rmtree(prepared_dir, ignore_errors=True)  # a rerun replaces the previous run's data
penguins = read_penguins(spark, params["data_path"], drop_invalid=params["drop_invalid"])
prepared = prepare(spark, penguins, config, prepared_dir)
print(prepared.counts)
print("training set:", prepared.train_path)

# COMMAND ----------

# MAGIC %md
# MAGIC ## HorovodRunner
# MAGIC
# MAGIC On Databricks Runtime ML (15.4 LTS ML and older) `HorovodRunner` comes from `sparkdl` and starts the
# MAGIC processes as Spark tasks. Elsewhere `sparkdl.HorovodRunner` does not exist (the `sparkdl` package on PyPI is an
# MAGIC unrelated project), so `penguin_lab.distributed.HorovodRunner` stands in: same constructor, same `run`, and real
# MAGIC Horovod processes on this machine, talking over gloo.
# MAGIC
# MAGIC - `np=-2`: 2 processes on the driver;
# MAGIC - `np=2`: 2 processes; on Databricks they are Spark tasks on the workers (here, 2 processes on this machine);
# MAGIC - `run(main, **kwargs)` calls `main(**kwargs)` in every process and returns rank 0's return value.
# MAGIC
# MAGIC On a cluster with worker nodes, the processes there must import `penguin_lab` as well: install this repository
# MAGIC as a notebook-scoped library first (for example `%pip install /Workspace/<path to this repository>`), and keep
# MAGIC the results folder, with the prepared Parquet, on storage every node sees (the default `/dbfs/tmp/penguin-lab`).

# COMMAND ----------

print("HorovodRunner from", HorovodRunner.__module__)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The training function
# MAGIC
# MAGIC This is the lab's `train_hvd`, running the single-node model (`PenguinNet`) and training loop (`fit`, the same
# MAGIC function notebook 2 uses). What Horovod adds:
# MAGIC
# MAGIC - `hvd.init()`, then `hvd.rank()` (this process) and `hvd.size()` (how many there are);
# MAGIC - each rank reads its own share of the prepared Parquet (`training_batches`: a `DistributedSampler` over the
# MAGIC   whole set when it fits in memory, else its own row groups), reshuffled before every epoch;
# MAGIC - the learning rate is multiplied by `hvd.size()`: each step now averages `size` batches;
# MAGIC - `hvd.DistributedOptimizer` averages the gradients of all ranks before every step;
# MAGIC - `broadcast_parameters` and `broadcast_optimizer_state` start every rank from rank 0's weights;
# MAGIC - at the end every rank computes a checksum of its weights and they are gathered, so we can check that all ranks
# MAGIC   ended with exactly the same model; rank 0 tests it and saves it (into a temporary folder, renamed into place
# MAGIC   when complete).
# MAGIC
# MAGIC The job sent to every process holds the paths of the prepared Parquet and the settings, not the data.

# COMMAND ----------

notebook.show_source(horovod_rank_main)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Train with 2 processes
# MAGIC
# MAGIC As in the lab: `HorovodRunner(np=2, driver_log_verbosity='all')`, which shows every process's output. Rank 0
# MAGIC prints its progress every 10 epochs. On Databricks the processes are Spark tasks, whose Python workers do not
# MAGIC see this notebook's `sys.path`: `workers_import_this_package` puts the repository on their `PYTHONPATH`.

# COMMAND ----------

model_dir = notebook.output_path(params) / "horovod" / "model"
job = DistributedJob.from_prepared(prepared, config, model_dir=model_dir)

hr = HorovodRunner(np=2, driver_log_verbosity="all")
with workers_import_this_package(spark):
    result = hr.run(horovod_rank_main, job=job)

print(f"{result['world_size']} processes, {result['epochs']} epochs in {result['train_seconds']:.1f} s")
for rank, checksum in enumerate(result["rank_checksums"]):
    print(f"rank {rank} weights sha256 {checksum}")
assert result["world_size"] == 2 and len(set(result["rank_checksums"])) == 1, "ranks ended with different weights"

# COMMAND ----------

# MAGIC %md
# MAGIC ## Load the model saved by rank 0 and test it
# MAGIC
# MAGIC The lab loads the weights with `torch.load`; here the model is a folder with `model.safetensors` (plain
# MAGIC tensors, nothing to unpickle) and `model.json`, read by `load_model`.

# COMMAND ----------

test_model, _ = load_model(model_dir)
test_loader = make_loader(make_dataset(prepared.x_test, prepared.y_test), batch_size=config.batch_size)
test_loss, test_accuracy = (t.item() for t in evaluate(test_model, test_loader, "cpu"))
print(f"test loss {test_loss:.4f}, accuracy {test_accuracy:.3f} on {len(prepared.y_test)} held-out penguins")
assert abs(test_accuracy - result["test_accuracy"]) < 1e-6

# COMMAND ----------

# The lab's new penguin [[1, 50.4, 15.3, 20, 50]]: Biscoe, culmen 50.4 mm x 15.3 mm, flipper 200 mm, 5000 g.
prediction = Predictor(model_dir).predict("Biscoe", CulmenLength=50.4, CulmenDepth=15.3,
                                          FlipperLength=200, BodyMass=5000)
print("Prediction:", prediction["species"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## Log the run to MLflow, once, from the driver
# MAGIC
# MAGIC The ranks do not log: when they have finished, this driver logs the run's settings, every epoch's figures
# MAGIC from rank 0, the counts, the plots and rank 0's model, as one MLflow run (horovod, 2 processes).

# COMMAND ----------

write_plots(model_dir.parent, load_model(model_dir)[0], History(**result["history"]), prepared.test_path)
log_run("notebook 4: HorovodRunner", run_params(config, params["data_path"], "horovod", 2), result["history"],
        {**prepared.counts, **result}, model_dir.parent, params["register_model"], params["tracking"])
