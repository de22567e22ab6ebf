# Developer tasks. CI runs `bash .ci/run` (a fresh venv, then `python -m pytest -q`).
PYTHON ?= python

.PHONY: test test-fast lint format typecheck gpu-check

test:  ## the whole suite, as CI runs it
	$(PYTHON) -m pytest -q

test-fast:  ## the developers' loop: everything not marked slow (about two minutes on 2 cores)
	$(PYTHON) -m pytest -q -m "not slow"

lint:  ## ruff (lint and format check) and clang-format on csrc/
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	clang-format --dry-run --Werror $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'tests/cpp/*.cpp')

format:  ## rewrite Python and C++ sources in the project's style
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .
	clang-format -i $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'tests/cpp/*.cpp')

typecheck:  ## mypy on the package (settings in pyproject.toml)
	$(PYTHON) -m mypy

gpu-check:  ## on a GPU machine: build, GPU tests, throughput, one summary table
	bash benchmarks/gpu_check.sh
