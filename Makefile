# fastclip: the project's vocabulary. `make test` and `make demo` work on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PATH := $(HOME)/.cargo/bin:$(PATH)
export MATURIN_NO_INSTALL_RUST := 1
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
PYTHON ?= python3
WHEELS := target/wheels
# `make fuzz FUZZ_TIME=300 FUZZ_SEED=7 FUZZ_ARGS=-jobs=2`: libFuzzer flags; FUZZ_SEED=0 picks one at random
FUZZ_TIME ?= 600
FUZZ_SEED ?= 0
FUZZ_ARGS ?=
FUZZ := $(PY) tests/fuzz/fuzz_api.py -timeout=60 -max_len=2048 -len_control=0 -print_final_stats=1

.PHONY: all venv build test lint test-rust test-python test-torch test-paddle demo demo-distributed bench \
	bench-rust bench-python bench-distributed clean wheel test-matrix test-matrix-ends fuzz fuzz-smoke

all: build

# The virtualenv with everything tests, demo and benchmarks need (from PyPI only).
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.9.4,<2" numpy "pytest>=8" "hypothesis>=6" ml_dtypes ruff mypy \
		"pytest-benchmark>=4" "matplotlib>=3.7" "mpich>=4.1" "mpi4py>=4.0" atheris
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

test: build lint test-rust test-python fuzz-smoke

# The distributable: one cp39-abi3 wheel for every CPython >= 3.9 (pyo3's abi3-py39), and the sdist.
wheel: $(VENV)/.deps
	$(VENV)/bin/maturin build --release -q -o $(WHEELS)
	$(VENV)/bin/maturin sdist -o $(WHEELS)

# The wheel installed and tested in a virtualenv per CPython 3.9..3.13 found under pyenv
# (.venv-matrix/<version>); without pyenv, in the current python only. `-ends`: the lowest and highest.
test-matrix: wheel
	$(PY) scripts/test_matrix.py

test-matrix-ends: wheel
	$(PY) scripts/test_matrix.py --ends

# Coverage-guided fuzzing of the public API (atheris); new inputs go to target/fuzz/corpus, the
# committed seeds in tests/fuzz/corpus are only read, crashes land in target/fuzz/.
fuzz: build
	mkdir -p target/fuzz/corpus
	$(FUZZ) -max_total_time=$(FUZZ_TIME) -seed=$(FUZZ_SEED) -artifact_prefix=target/fuzz/ $(FUZZ_ARGS) \
		target/fuzz/corpus tests/fuzz/corpus

# What `make test` runs: 4500 inputs (about 60 s) on a fixed seed, so the same inputs every run, from the committed corpus, in a fresh scratch corpus.
fuzz-smoke: build
	rm -rf target/fuzz/smoke && mkdir -p target/fuzz/smoke
	$(FUZZ) -runs=4500 -max_total_time=180 -seed=1 -artifact_prefix=target/fuzz/ target/fuzz/smoke tests/fuzz/corpus

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
	rm -rf target $(VENV) .venv-matrix .pytest_cache .hypothesis
