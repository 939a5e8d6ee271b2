SHELL := /bin/bash
# turbobatch: `make demo` and `make test` do all the setup on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installed before the project so pip never pulls a multi-GB CUDA build on a CPU machine.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean gpu-check gpu-wheelhouse

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

# Renders examples/prompts.parquet with the tiny model on a local Ray into out/demo.
# Run it twice: the second run finds every shard committed and renders nothing.
demo: setup
	$(BIN)/python -m turbobatch render examples/prompts.parquet out/demo --model tiny-sd-turbo --shard-size 10

test: setup
	$(BIN)/python -m pytest

# CPU measurements (never asserted in tests); results go to docs/BENCHMARKS.md.
bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ray_data.py
	$(BIN)/python benchmarks/writer.py
	$(BIN)/python benchmarks/scale.py
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
# More arguments for benchmarks/gpu.py; 2 rounds keep the whole check inside one 10-minute call.
GPU_BENCH_ARGS ?= --runs 2

# On a machine with a registry (this one): everything gpu-check needs, to carry to the GPU machine.
gpu-wheelhouse: setup
	WHEELHOUSE=$(WHEELHOUSE) CUDA_ROOT=$(CUDA_ROOT) bash deploy/gpu_wheelhouse.sh

gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) WHEELHOUSE=$(WHEELHOUSE) CUDA_ROOT=$(CUDA_ROOT) GPU_OUT=$(GPU_OUT) \
	  GPU_VARIANTS=$(GPU_VARIANTS) GPU_BENCH_ARGS="$(GPU_BENCH_ARGS)" bash deploy/gpu_check.sh
