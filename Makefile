# Fashion-MNIST report kit. `make` lists the targets; each documents itself with a `##` line.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned for a fresh venv on x86_64 Linux (taken from the local wheel cache where there is one);
# override for other platforms, e.g. `make TORCH_VERSION=2.9.1 TORCHVISION_VERSION=0.24.1`.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
PROFILE ?= auto
# Notebooks run at once where none reads another's results (make report JOBS=2); empty: automatic (fmnist_utils.schedule).
JOBS ?=
# The title block of report.pdf, e.g. make report AUTHOR="Ada Lovelace" COURSE="Deep Learning" (DATE=YYYY-MM-DD; default: the run's date).
AUTHOR ?=
COURSE ?=
DATE ?=
PYTEST_ARGS ?=
# Jupyter refuses to run as root without --allow-root (the usual case in a container).
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help venv data test test-fast report lab train bench bench-sweep bench-gpu clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(PY) -m pip install -e ".[pipeline,dev]"
	@touch $@

venv: $(VENV)/.installed ## create .venv and install the kit with its dependencies

data: $(VENV)/.installed ## find Fashion-MNIST (data/, FMNIST_DATA, Debian's package) or fetch it
	@# Debian's package is installed only when no copy is found at all: a copy that is found but
	@# refused (FMNIST_DATA with modified files) is the user's to fix, and its error is printed below.
	@$(PY) -m fmnist_utils data --no-download 2>/dev/null || { \
	  if $(PY) -c 'from fmnist_utils import data; raise SystemExit(0 if data.locate() is None else 1)' 2>/dev/null \
	     && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null || true; \
	  fi; \
	  $(PY) -m fmnist_utils data; }

report: data ## run the notebooks (reusing up-to-date ones) into runs/<profile>/ and build report/report.html + .pdf (PROFILE=auto|smoke|quick|full, or BUDGET=30m|2h|<minutes>; JOBS=N notebooks at once where the graph allows; AUTHOR="..." COURSE="..." for the title block; full without CUDA stops with its estimate unless FMNIST_IGNORE_ESTIMATE=1)
	@# make exits 2 whatever a recipe's status: the kit's own status (README, exit statuses) is the
	@# "Error N" make prints, and the exit status of `$(PY) -m fmnist_utils report` run directly.
	$(PY) -m fmnist_utils report --profile $(PROFILE) $(if $(BUDGET),--budget $(BUDGET)) $(if $(JOBS),--jobs $(JOBS)) $(if $(AUTHOR),--author "$(AUTHOR)") $(if $(COURSE),--course "$(COURSE)") $(if $(DATE),--date "$(DATE)")

lab: data ## open JupyterLab on the notebooks
	$(PY) -m jupyter lab $(LAB_FLAGS) notebooks/

test: data ## run the test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: data ## the inner loop: every test not marked slow or heavy (make test runs them all)
	$(PY) -m pytest -m "not slow and not heavy" $(PYTEST_ARGS)

train: data ## train the study's CNN briefly from the command line and print test accuracy
	$(PY) -m fmnist_utils train --epochs 1 --subset 5000

bench: data ## time the tutorial training loop against the kit's (images/s and ratio)
	$(PY) benchmarks/bench_train.py

bench-sweep: data ## units per hour of sweep training: tutorial loop, fit one by one, fit_many stacked (SIZE=smoke|cpu|full)
	$(PY) benchmarks/bench_sweep.py $(if $(SIZE),--size $(SIZE))

bench-gpu: data ## tutorial vs eager vs captured loop and time-to-accuracy on a validation split (made for a CUDA GPU)
	$(PY) benchmarks/bench_gpu.py

# A GPU machine without internet. Here, `make wheelhouse PY=3.12` (PY: that machine's Python
# version; GLIBC: its glibc) fills wheelhouse/; bring it along, then `make verify-gpu` there.
GLIBC ?= 2.35
WHEELHOUSE_ARGS ?=
WHEELHOUSE_PY = $(if $(filter command line,$(origin PY)),$(PY),3.12)
HOST_PY = $(firstword $(wildcard $(VENV)/bin/python) $(PYTHON))
# verify-gpu runs on whatever Python has torch there (no .venv on such a machine).
VERIFY_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
VERIFY_PROFILE = $(if $(filter auto,$(PROFILE)),full,$(PROFILE))
STAGES ?=
.PHONY: wheelhouse verify-gpu

wheelhouse: ## download here wheels (all but torch) and Fashion-MNIST for an offline GPU machine into wheelhouse/ (PY=3.12: its Python)
	$(HOST_PY) benchmarks/wheelhouse.py --python $(WHEELHOUSE_PY) --glibc $(GLIBC) $(WHEELHOUSE_ARGS)

verify-gpu: ## on the GPU machine: install from wheelhouse/, benchmarks, full report; writes benchmarks/results/<gpu>-<date>.json (PROFILE=smoke on a CPU; STAGES=report to finish one)
	$(VERIFY_PY) benchmarks/verify_gpu.py --profile $(VERIFY_PROFILE) $(if $(STAGES),--stages $(STAGES))

clean: ## remove the kit's run folders and the built report (only folders carrying its marker; keeps .venv and data/)
	@test -x $(PY) || { echo "nothing to clean: no $(VENV) yet"; exit 0; }; \
	$(PY) -c 'from fmnist_utils import paths, run_folders; \
	removed, left = run_folders.clean(paths.runs_dir(), paths.report_dir()); \
	print(*(f"removed {p}" for p in removed), *(f"kept {p} (not marked as the kit'"'"'s)" for p in left), sep="\n")'

