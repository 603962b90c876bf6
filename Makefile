# `make demo` and `make test` install into .venv on first use (about 2 minutes, ~5.5 GB with torch).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install demo test test-all lint format bench bench-quick bench-quality bench-images gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# the peers the benchmarks compare against (the `bench` extra)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# Train the quickstart (2-D checkerboard, our recommended MMF); leaves a checkpoint and a
# picture of its 1- and 2-step samples under runs/quickstart/.
demo: $(STAMP)
	$(PY) -m mmf_lightning fit --config configs/quickstart.yaml

# The suite (under 10 minutes on 2 cores); `make test-all` adds the checks marked slow.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=20

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=20 -m ""

lint: $(STAMP)
	$(PY) -m ruff check mmf_lightning tests benchmarks notebooks
	$(PY) -m ruff format --check mmf_lightning tests benchmarks notebooks
	$(VENV)/bin/lint-imports  # the layers of pyproject.toml's [tool.importlinter]

format: $(STAMP)
	$(PY) -m ruff format mmf_lightning tests benchmarks notebooks
	$(PY) -m ruff check --fix mmf_lightning tests benchmarks notebooks

# Step time and peak memory of each objective and peer as ratios over flow matching, and sampling cost,
# in one run per network (docs/benchmarks.md): the 2-D MLP (~3 minutes), then the CIFAR-10 UNet
# (~100 minutes on 2 cores; bench-quick: a smaller UNet, ~20 minutes), then a DiT of half DiT-S/2 (~10 minutes).
bench: $(BENCH_STAMP)
	cd benchmarks && ../$(PY) jvp_cost.py --net mlp
	cd benchmarks && ../$(PY) jvp_cost.py
	cd benchmarks && ../$(PY) jvp_cost.py --net dit --width 192 --depth 6 --heads 3

bench-quick: $(BENCH_STAMP)
	cd benchmarks && ../$(PY) jvp_cost.py --net mlp
	cd benchmarks && ../$(PY) jvp_cost.py --channels 64 --num_res_blocks 2 --repeats 2

# Sample quality at equal steps and at equal wall-clock time on 2-D data (5 seeds), the ODE and control
# trajectories (5 seeds), the recipe study, the digits (5 seeds), the newer recipes and the guidance study:
# the runs behind docs/benchmarks.md (about 8 hours on 2 cores); results in benchmarks/results/, and an
# interrupted run continues where it stopped. QUALITY_METHODS: the methods issue 9 compares on every task.
QUALITY_METHODS = fm meanflow_stopgrad meanflow_full mmf_lam05 mmf_lam1 mmf_curriculum mmf_lam1_inst recommended \
	consistency consistency_sg
bench-quality: $(BENCH_STAMP)
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons \
		--methods $(QUALITY_METHODS) peer_meanflow peer_rectified_flow peer_torchcfm
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons \
		--methods recommended_weighted recommended_logit_normal recommended_half_fm
	cd benchmarks && ../$(PY) quality.py --datasets gaussian --methods $(QUALITY_METHODS) peer_meanflow
	cd benchmarks && ../$(PY) quality.py --budget time --datasets checkerboard \
		--methods fm meanflow_stopgrad recommended peer_meanflow
	cd benchmarks && ../$(PY) quality.py --datasets ode control --methods $(QUALITY_METHODS) recommended_half_fm
	for recipe in lr=2e-3 lr=3e-3 ema_decay=0.999 "lr=2e-3 ema_decay=0.999"; do \
		cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods recommended peer_meanflow \
			--recipe $$recipe && cd .. || exit 1; done
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods recommended_half_fm --recipe lr=2e-3
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods fm recommended --seeds 3 \
		--steps 10000 --recipe lr=2e-3 --out results/steps_10000
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods recommended peer_meanflow \
		--recipe lr=3e-3 --eval_n 50000
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods fm recommended \
		--steps 10000 --recipe lr=2e-3 --eval_n 50000 --out results/steps_10000
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods fm recommended --seeds 2 \
		--steps 10000 --recipe lr=2e-3 width=512 --eval_n 50000 --out results/steps_10000
	cd benchmarks && ../$(PY) quality.py --datasets digits --steps 600 --seeds 5 \
		--methods $(QUALITY_METHODS) peer_meanflow warm_start
	cd benchmarks && ../$(PY) quality.py --datasets checkerboard moons --methods imf alphaflow warm_start recommended_fd \
		--recipe lr=3e-3
	cd benchmarks && ../$(PY) guidance.py --seeds 3
	cd benchmarks && ../$(PY) plot_quality.py results/quality_steps.jsonl ../docs/toy_quality_steps.png
	$(MAKE) bench-images

# The image recipe, measured on images (docs/benchmarks/images.md): the digits, each method trained with the recipe
# of configs/digits/quick.yaml (a method is the config with overrides, images.VARIANTS), judged in two feature spaces.
# The table (5 seeds: the config, the paper's curriculum it shipped until 2026-12-08, the peers), the screens that
# chose the recipe (2 seeds a candidate), lambda on images, then 5000 steps (not run yet); ~6 minutes a run on a free
# core. An interrupted command continues where it stopped (results/images_*.jsonl).
IMAGE_SCREENS := curriculum300+equal50 curriculum300+equal0+times_ln04_1 curriculum300+times_ln04_1+equal50 \
	curriculum300+times_ln04_1+equal50+p05 curriculum300+times_ln04_1+equal50+p05+conditional \
	times_ln04_1+equal50+p05 equal0 equal25 equal50 equal50+lam05 equal90 times_ln04_1 times_ln0_3 p1 lr0.001 lr0.004 \
	ema995
IMAGE_LAMBDA := lam05 lam1 curriculum300 conditional curriculum300+conditional
bench-images: $(BENCH_STAMP)
	cd benchmarks && ../$(PY) images.py --methods shipped curriculum300+equal0 fm peer_meanflow ict --seeds 5
	cd benchmarks && ../$(PY) images.py --methods $(IMAGE_SCREENS) --seeds 2
	cd benchmarks && ../$(PY) images.py --methods shipped $(IMAGE_LAMBDA) --seeds 2
	cd benchmarks && ../$(PY) images.py --methods shipped fm peer_meanflow --steps 5000 --seeds 5
	cd benchmarks && ../$(PY) plot_images.py

# Everything that needs a GPU, in one short run (benchmarks/gpu_check.py; under 8 minutes on one H100): results in
# benchmarks/results/gpu_check.json and .md. `--tiny` (the suite's) runs it on small nets on the CPU.
gpu-check: $(STAMP)
	cd benchmarks && ../$(PY) gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
