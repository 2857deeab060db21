# fastclip: the project's vocabulary. `make test` and `make demo` work on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PATH := $(HOME)/.cargo/bin:$(PATH)
export MATURIN_NO_INSTALL_RUST := 1
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
PYTHON ?= python3

.PHONY: all venv build test lint test-rust test-python test-torch test-paddle demo demo-distributed bench \
	bench-rust bench-python bench-distributed clean

all: build

# The virtualenv with everything tests, demo and benchmarks need (from PyPI only).
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.9.4,<2" numpy "pytest>=8" "hypothesis>=6" ml_dtypes ruff mypy \
		"pytest-benchmark>=4" "matplotlib>=3.7" "mpich>=4.1" "mpi4py>=4.0"
	touch $@

venv: $(VENV)/.deps

# Release build of the extension, installed (editable) into the venv.
build: $(VENV)/.deps
	$(VENV)/bin/maturin develop --release -q

lint: $(VENV)/.deps
	cargo fmt --check
	cargo clippy --all-targets --all-features -q -- -D warnings
	$(VENV)/bin/ruff check python tests benches scripts
	$(PY) -m mypy.stubtest fastclip._fastclip
	$(PY) -m mypy

test-rust:
	cargo test --release -q

test-python: build
	$(PY) -m pytest -q

test: build lint test-rust test-python

# Optional: the DLPack tests against real torch (a large download: PyPI's Linux wheel pulls CUDA libraries).
test-torch: build
	$(PIP) install -q torch
	$(PY) -m pytest -q tests/test_dlpack.py tests/test_buffers.py tests/test_grad_rule.py tests/test_torch_interop.py \
		tests/test_distributed.py tests/test_adaptive.py tests/test_functional.py

# Optional: real Paddle (CPU wheel from PyPI): fastclip on Paddle's own tensors, pairs and golden cases.
test-paddle: build
	$(PIP) install -q paddlepaddle
	$(PY) -m pytest -q tests/test_paddle_interop.py tests/test_clip_paddle.py tests/test_grad_rule.py tests/test_optimizer.py

demo: build
	$(PY) -m fastclip demo --plot demo.png

# The seed's experiment data parallel on MPI ranks (mpiexec from the mpich wheel).
demo-distributed: build
	$(PY) -m fastclip.demo_distributed --ranks 2

bench-rust:
	cargo bench --bench kernels

bench-python: build
	$(PY) -m pytest benches -q --benchmark-only --benchmark-group-by=group

bench: build
	$(PY) -m fastclip bench

bench-distributed: build
	$(PY) -m fastclip.bench_distributed --ranks 2

clean:
	rm -rf target $(VENV) .pytest_cache .hypothesis
