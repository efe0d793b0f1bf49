# Each of `make demo`, `make sweep` and `make test` does all set-up on a fresh clone.
# Each creates .venv when it is missing or older than pyproject.toml / constraints.txt.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast demo sweep tour bench bench-gpu lint format clean

setup: $(STAMP)

# torch first, from the pinned version, so nothing installed after it can swap it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not ray"

# build -> pretrain -> evaluate on a local Ray; bigger settings: make demo ARGS="--shapes 4800 --address ray://head:10001"
demo: $(STAMP)
	$(BIN)/python jobs/demo.py $(ARGS)

# Ray Tune: 3 CPU scales x 2 initialisations on the demo's build (built if missing); report in demo/sweeps/
sweep: $(STAMP)
	$(BIN)/python jobs/sweep_demo.py $(ARGS)

tour: $(STAMP)
	$(BIN)/python -m uni3d.demo

bench: $(STAMP)
	$(BIN)/python bench/grouping.py
	$(BIN)/python bench/encoder.py
	$(BIN)/python bench/meshes.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/startup.py

# on a GPU machine: encoder step MFU, grouping share, teacher towers, Ray Train vs bare loop -> bench-gpu.md
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache
