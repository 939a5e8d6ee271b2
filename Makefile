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
	$(BIN)/python -m jobs.render examples/prompts.parquet out/demo --model tiny-sd-turbo --shard-size 10

test: setup
	$(BIN)/python -m pytest

# CPU measurements (never asserted in tests); results go to docs/BENCHMARKS.md.
bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/writer.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python -m benchmarks.flops

clean:
	rm -rf out .pytest_cache

# On a lent GPU machine with no package registry (docs/GPU.md): install pycuda from the carried
# $(WHEELHOUSE) (made by `make gpu-wheelhouse`: a wheel prebuilt for the machine's Python, else
# the sdist is built there) into a venv that sees the machine's torch, then the GPU tests, the
# kernel benchmarks and the pipeline benchmark (benchmarks/gpu.py, with diffusers from the
# wheelhouse). Fails if the kernels do not load (backend is not pycuda).
GPU_PYTHON ?= python3
GPU_VENV   ?= build/gpu-venv
WHEELHOUSE ?= build/gpu-wheelhouse
CUDA_ROOT  ?= /usr/local/cuda
GPU_OUT    ?= build/gpu-check
# Worker speed variants timed beside the unchanged worker (workers/speedups.py). compile_unet and
# cuda_graphs compile for minutes: measure them in their own call,
# `make gpu-check GPU_VARIANTS=compile_unet,cuda_graphs`.
GPU_VARIANTS ?= channels_last,fuse_qkv,tiny_vae
GPU_ENV    := TURBOBATCH_CACHE=$(abspath build/gpu-cache) PYTHONPATH=$(CURDIR)

# On a machine with a registry (this one): everything gpu-check needs, to carry to the GPU machine.
gpu-wheelhouse: setup
	WHEELHOUSE=$(WHEELHOUSE) CUDA_ROOT=$(CUDA_ROOT) bash deploy/gpu_wheelhouse.sh

gpu-check:
	@ls $(WHEELHOUSE)/pycuda-*.tar.gz >/dev/null || { echo "no pycuda sdist in $(WHEELHOUSE): see docs/GPU.md"; exit 1; }
	test -x $(GPU_VENV)/bin/python || $(GPU_PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -c "import pycuda.driver, pytest" 2>/dev/null || ( set -e; \
	  wh=$(abspath $(WHEELHOUSE)); py=$(abspath $(GPU_VENV))/bin/python; \
	  $$py -m pip install --no-index --find-links $$wh setuptools wheel pytest pytools platformdirs mako; \
	  tag=$$($$py -c 'import sys; print("cp%d%d" % sys.version_info[:2])'); \
	  if ls $$wh/pycuda-*-$$tag-$$tag-*.whl >/dev/null 2>&1; then \
	    $$py -m pip install --no-index --no-deps $$wh/pycuda-*-$$tag-$$tag-*.whl; \
	  else \
	    rm -rf build/pycuda-src build/libcuda; mkdir -p build/pycuda-src build/libcuda; \
	    tar xzf $$wh/pycuda-*.tar.gz -C build/pycuda-src --strip-components=1; \
	    lib=$$(ldconfig -p | awk '/libcuda\.so\.1 /{print $$NF; exit}'); \
	    if [ -n "$$lib" ]; then ln -s "$$lib" build/libcuda/libcuda.so; fi; \
	    cd build/pycuda-src; \
	    $$py configure.py --cuda-root=$(CUDA_ROOT) --no-cuda-enable-curand \
	      --cudadrv-lib-dir=$(abspath build/libcuda),$(CUDA_ROOT)/lib64/stubs,$(CUDA_ROOT)/lib64; \
	    $$py -m pip install --no-index --find-links $$wh --no-build-isolation .; \
	  fi )
	$(GPU_ENV) $(GPU_VENV)/bin/python -c "import sys, kernels; print('kernels backend:', kernels.BACKEND, '-', kernels.BACKEND_REASON); sys.exit(kernels.BACKEND != 'pycuda')"
	$(GPU_ENV) $(GPU_VENV)/bin/python -m kernels.build
	$(GPU_ENV) $(GPU_VENV)/bin/python -m pytest tests/kernels -m gpu --noconftest -p no:cacheprovider -q -rs
	$(GPU_ENV) $(GPU_VENV)/bin/python -m benchmarks.kernels --markdown $(GPU_OUT)/benchmarks.md
	$(GPU_VENV)/bin/python -c "import diffusers" 2>/dev/null || \
	  $(GPU_VENV)/bin/python -m pip install --no-index --no-deps --find-links $(WHEELHOUSE) diffusers importlib_metadata
	set -o pipefail; $(GPU_ENV) $(GPU_VENV)/bin/python benchmarks/gpu.py --variants $(GPU_VARIANTS) | tee $(GPU_OUT)/gpu.txt
