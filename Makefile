# Two commands on a fresh machine: `make demo` (install + main job on the toy world) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch found locally here; users with CUDA may pass their own, e.g. TORCH_SPEC="torch==2.13.0"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.sau-installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sau-compress demo

# lint first, then the tests (the command CI runs)
test: lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check sau_compress cli tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
