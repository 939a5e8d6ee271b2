# turbobatch: `make demo` and `make test` do all the setup on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installed before the project so pip never pulls a multi-GB CUDA build on a CPU machine.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

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

clean:
	rm -rf out .pytest_cache
