# Two entry points, both creating or reusing .venv/ at the repository root:
#   make run   - install everything and run the main job (loralab run)
#   make test  - install everything and run the test suite's fast tier (make test-slow: the rest)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=

.PHONY: setup run test test-slow test-all quick notebook clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Pin the CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/loralab run $(RUN_ARGS)

quick: $(STAMP)
	$(BIN)/loralab run --quick $(RUN_ARGS)

# examples/lab.ipynb executed top to bottom into examples/lab.executed.ipynb, outputs and all
# (the quick setting; LORALAB_LAB_SIZE=full for the full lab).
notebook: $(STAMP)
	$(BIN)/jupyter execute examples/lab.ipynb --output=lab.executed --timeout=-1

# The fast tier: what a newcomer runs (a few minutes on 2 cores).
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10

# The slow tier: the notebook, benchmark smokes, 100k-row, kill and multi-process tests.
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10 -m slow

test-all: test test-slow

clean:
	rm -rf $(VENV) build src/*.egg-info
