# One virtual environment at .venv/ serves every target; each target sets it up when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# The main job, offline: draw a procedural world, build its prototypes, segment and score it.
demo: $(STAMP)
	$(BIN)/ovdiff demo --out demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/ovdiff bench --out bench/results.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
