# penguin-lab: `make run` runs the lab, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
UI_PORT ?= 5000

.PHONY: install run test test-runtimes horovod bench bench-distributed bench-score bench-seeds ui notebooks data clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@# Spark's classes, recorded once for a faster JVM start (penguin_lab/spark.py); optional.
	$(BIN)/python -m penguin_lab.spark_archive || echo "note: no Spark class archive; runs start slower"
	touch $@

run: install
	$(BIN)/penguin-lab run $(ARGS)

# Horovod 0.28.1 built once for this torch (CPU, gloo) and cached outside the clone.
horovod: install
	scripts/build_horovod.sh $(BIN)/python

test: install horovod
	$(BIN)/python -m pytest $(ARGS)

# The notebooks, as a Databricks driver runs them, on the libraries of each supported Databricks runtime
# (databricks/runtimes/*.txt); one venv per runtime, cached outside the clone. RUNTIMES="17.3-lts-ml" picks some.
test-runtimes:
	scripts/test_runtimes.sh $(RUNTIMES)

bench: install
	$(BIN)/python bench/bench_lab.py --repeat 2 $(ARGS)

bench-distributed: install horovod
	$(BIN)/python bench/bench_distributed.py $(ARGS)

bench-score: install
	$(BIN)/python bench/bench_score.py $(ARGS)

# PenguinNet over 20 seeds against scikit-learn baselines on the same splits (README: Learning on every seed).
bench-seeds: install
	$(BIN)/python bench/bench_seeds.py $(ARGS)

# The MLflow UI on the runs' store (runs/mlflow.db, which `make run` fills).
ui: install
	@mkdir -p runs
	@echo "MLflow UI for runs/mlflow.db: http://127.0.0.1:$(UI_PORT) (Ctrl-C stops it)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

# Run the notebooks top to bottom, locally, as plain Python.
notebooks: install
	for nb in notebooks/0*.py; do echo "== $$nb"; $(BIN)/python $$nb || exit 1; done

data: install
	$(BIN)/python scripts/make_penguins_csv.py

clean:
	rm -rf $(VENV) runs .pytest_cache
