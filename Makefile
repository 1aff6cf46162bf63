# Two entry points (see README): `make book` builds the book, `make test` runs every test;
# `make bench` measures the benchmarks' ratios; `make gpu-run` prepares the offline GPU run of chapters 10-11.
# Both create the virtual environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ranem-installed

# Pin glibc malloc: without it every large activation buffer is mmapped and unmapped on
# each forward, which halves CPU throughput (measured on 2 cores: 481 against 932 img/s at batch 256).
export MALLOC_MMAP_MAX_ = 0
export MALLOC_TRIM_THRESHOLD_ = 2147483647
export MALLOC_TOP_PAD_ = 268435456
# Idle OpenMP threads sleep instead of spinning: with a notebook kernel and pytest (or any other
# process) sharing the cores, spinning threads made torch 10-30x slower here.
export OMP_WAIT_POLICY = PASSIVE
# A relative RANEM_DATA would break in notebooks (their working directory is book/).
ifdef RANEM_DATA
export RANEM_DATA := $(abspath $(RANEM_DATA))
endif

.PHONY: book html test bench env clean gpu-pack gpu-run

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[book,test,lite]'
	touch $(STAMP)

# Notebooks executed at once by `make book` (each kernel gets cores / BOOK_JOBS torch threads).
BOOK_JOBS ?= 2

# Execute the chapters this machine can run (cpu mode by default; gpu-only chapters keep
# their stored outputs), then render them to _build/html with warnings as errors.
book: $(STAMP)
	RANEM_MODE=$${RANEM_MODE:-cpu} $(BIN)/python book/_execute.py --jobs $(BOOK_JOBS)
	$(BIN)/jupyter-book build . -W -n --keep-going

# Render only, from the stored outputs.
html: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(STAMP)
	RANEM_MODE=quick $(BIN)/python -m pytest -q

# Every benchmark's ratios (ours / floor or peer) in one run -> benchmarks/results.md, which the
# execution-status page shows. BENCH_PYTHON may name another environment that also has the peers
# (captum-rise, Quantus; see benchmarks/metrics.py); without them their rows say "peer not installed".
BENCH_PYTHON ?= $(BIN)/python
bench: $(STAMP)
	$(BENCH_PYTHON) benchmarks/run_all.py

# The offline GPU run (gpu/pack.py, gpu/device.sh): pack the wheels, the Lite2 weights and an Imagenette
# subset into gpu-pack/ (ignored, within the device tool's 64 MiB), test the execution path here in quick
# mode, and print the command for the GPU machine (carry gpu-pack there).
gpu-pack: gpu-pack/MANIFEST.json

gpu-pack/MANIFEST.json: gpu/pack.py $(STAMP)
	$(BIN)/python gpu/pack.py gpu-pack

gpu-run: gpu-pack
	RANEM_MODE=quick PYTHON=$(abspath $(BIN)/python) RANEM_CACHE=$(abspath gpu-pack)-quick-cache bash gpu/device.sh gpu-pack
	@echo "On the GPU machine (device tool, carry [\"gpu-pack\"]): bash gpu/device.sh gpu-pack"

clean:
	rm -rf _build
