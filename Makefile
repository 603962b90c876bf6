# `make demo` and `make test` install into .venv on first use (about 2 minutes, ~5.5 GB with torch).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint format bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Train the quickstart (2-D checkerboard, our recommended MMF); leaves a checkpoint and a
# picture of its 1- and 2-step samples under runs/quickstart/.
demo: $(STAMP)
	$(PY) -m mmf_lightning fit --config configs/quickstart.yaml

# The suite (under 10 minutes on 2 cores); `make test-all` adds the checks marked slow.
test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(PY) -m ruff check mmf_lightning tests benchmarks
	$(PY) -m ruff format --check mmf_lightning tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format mmf_lightning tests benchmarks
	$(PY) -m ruff check --fix mmf_lightning tests benchmarks

# Step time and peak memory of each objective as ratios over flow matching, in one run
# (the CIFAR-10 UNet: about 45 minutes on 2 cores; bench-quick: a smaller UNet, about 6 minutes).
bench: $(STAMP)
	$(PY) benchmarks/jvp_cost.py

bench-quick: $(STAMP)
	$(PY) benchmarks/jvp_cost.py --channels 64 --num_res_blocks 2 --repeats 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
