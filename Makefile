SHELL := /bin/bash
# turbobatch: `make demo` and `make test` do all the setup on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Installed before the project so pip never pulls a multi-GB CUDA build on a CPU machine.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_PIN  := torch==2.13.0
TORCH_SPEC ?= $(TORCH_PIN)
# DEPS=lock (default): the exact versions that passed the suite, requirements/lock-py3.X.txt.
# DEPS=newest: the newest versions pyproject.toml allows (CI's second venv sees upstream releases).
DEPS   ?= lock
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK   := requirements/lock-py$(PY_VERSION).txt
LOCK_PYTHONS := 3.11 3.12
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean lock gpu-check gpu-wheelhouse

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard requirements/lock-py*.txt)
	@test "$(DEPS)" != lock || test -f $(LOCK) || { echo "no lock for Python $(PY_VERSION) ($(LOCK)); locks exist for $(LOCK_PYTHONS): make setup PYTHON=python3.12, or DEPS=newest" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	if [ "$(DEPS)" = lock ]; then $(BIN)/pip install -r $(LOCK) && $(BIN)/pip install --no-deps -e .; \
	else $(BIN)/pip install --upgrade --upgrade-strategy eager -e ".[test]" --constraint <(echo "$(TORCH_PIN)"); fi
	touch $(STAMP)

# Regenerates the locks: the newest versions pyproject.toml allows, per Python, torch excluded
# (installed first, above). Then `make test` on them before committing (README: Updating the lock).
lock: setup
	$(BIN)/python -c "import uv" 2>/dev/null || $(BIN)/pip install -q uv
	for v in $(LOCK_PYTHONS); do \
	  $(BIN)/uv pip compile pyproject.toml --extra test --upgrade --quiet --python-version $$v \
	    --python-platform x86_64-manylinux_2_28 --constraint <(echo "$(TORCH_PIN)") \
	    --custom-compile-command "make lock" | $(BIN)/python requirements/drop_torch.py > requirements/lock-py$$v.txt \
	  || exit 1; done

# Renders examples/prompts.parquet with the tiny model on a local Ray into out/demo.
# Run it twice: the second run finds every shard committed and renders nothing.
DEMO_OUT ?= out/demo
demo: setup
	$(BIN)/python -m turbobatch render examples/prompts.parquet $(DEMO_OUT) --model tiny-sd-turbo --shard-size 10

# Two processes (pytest-xdist), a test file each at a time: the real-Ray tests wait on clusters most
# of their time, so on 2 cores the suite takes ~15 min instead of ~21 (docs/BENCHMARKS.md, "The suite").
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# ruff: the checks (pyproject's [tool.ruff.lint]) and the formatter's layout; CI runs it first.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The unit tests (tests/unit: no Ray, minutes): CI runs them on the newest versions too.
test-fast: setup
	$(BIN)/python -m pytest tests/unit -m "not slow" -q

# CPU measurements (never asserted in tests); results go to docs/BENCHMARKS.md.
bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ray_data.py
	$(BIN)/python benchmarks/writer.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/driver_scale.py
	$(BIN)/python -m benchmarks.flops

clean:
	rm -rf out .pytest_cache

# On a lent GPU machine with no package registry (docs/GPU.md): deploy/gpu_check.sh installs
# pycuda (a wheel prebuilt for the machine's Python, else the sdist built there), diffusers and
# pytest from the carried $(WHEELHOUSE) (made by `make gpu-wheelhouse`) with `pip --target`, then
# runs the GPU tests, the kernel benchmarks and the pipeline benchmark (benchmarks/gpu.py).
# Fails if any step fails, the kernels not loading (backend is not pycuda) included.
GPU_PYTHON ?= python3
WHEELHOUSE ?= build/gpu-wheelhouse
CUDA_ROOT  ?= /usr/local/cuda
GPU_OUT    ?= build/gpu-check
# Workers timed side by side (benchmarks/gpu.py --variants; empty: previous, none, each speed change
# alone, default, all). compile_decoder compiles for minutes: measure it in its own call,
# `make gpu-check GPU_VARIANTS=default,compile_decoder GPU_BENCH_ARGS="--decoders vae"`.
GPU_VARIANTS ?=
# Models benchmarks/gpu.py times side by side (--models; empty: sd-turbo and sdxl-turbo). The DiT
# families: GPU_MODELS="Tongyi-MAI/Z-Image-Turbo black-forest-labs/FLUX.2-klein-4B" with
# GPU_BENCH_ARGS="--runs 2 --decoders vae --batch-size 4 --images 16" (1024x1024, bf16, random weights).
GPU_MODELS ?=
# More arguments for benchmarks/gpu.py; 2 rounds keep the whole check inside one 10-minute call.
GPU_BENCH_ARGS ?= --runs 2

# On a machine with a registry (this one): everything gpu-check needs, to carry to the GPU machine.
gpu-wheelhouse: setup
	WHEELHOUSE=$(WHEELHOUSE) CUDA_ROOT=$(CUDA_ROOT) bash deploy/gpu_wheelhouse.sh

gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) WHEELHOUSE=$(WHEELHOUSE) CUDA_ROOT=$(CUDA_ROOT) GPU_OUT=$(GPU_OUT) \
	  GPU_VARIANTS=$(GPU_VARIANTS) GPU_MODELS="$(GPU_MODELS)" GPU_BENCH_ARGS="$(GPU_BENCH_ARGS)" bash deploy/gpu_check.sh
