# One virtual environment at .venv/ serves every target; each target sets it up when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint format docs test test-fiftyone label-studio bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,ray,ui]'
	# the labelstudio extra without its opencv/numpy pins: the SDK's brush codec and what importing it needs
	$(BIN)/python -m pip install -q --no-deps 'label-studio-sdk>=2.1,<2.2' appdirs ijson lxml 'nltk>=3.10,<=3.11' 'pyjwt>=2.13,<2.14' ujson xmljson
	touch $(STAMP)

install: $(STAMP)

# The main job, offline: draw a procedural world, build its prototypes, segment and score it.
demo: $(STAMP)
	$(BIN)/ovdiff demo --out demo

# The formatter and the linter (ruff, configured in pyproject.toml) gate the suite: unformatted code fails CI.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The manual (docs/, mkdocs.yml) into site/: strict, so a broken link, a page missing from the nav or an API
# reference that no longer resolves fails the build (and `make test`). Nothing is downloaded.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint docs
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

# Label Studio in its own venv (.venv-ls), for tests/test_label_studio.py (skipped without it) and docs/label-studio.md.
label-studio:
	PY=$(PY) .ci/label-studio-venv.sh

# FiftyOne in its own venv over .venv (.venv-fo): its pins would downgrade .venv's opencv and starlette.
test-fiftyone: $(STAMP)
	.ci/fiftyone-venv.sh
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv-fo/bin/python -m pytest -q -m fiftyone tests/test_fiftyone.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/ovdiff bench --out bench/results.json

# On a CUDA machine: the fp16/bf16 tests on the device, then the bench at the paper's sizes in the
# GPU's half precision (--dtype auto: bf16 where supported, else fp16).
bench-gpu: $(STAMP)
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make bench-gpu needs a CUDA GPU')"
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m gpu tests/test_precision.py
	HF_HUB_OFFLINE=1 $(BIN)/ovdiff bench --device cuda --out bench/results-gpu.json --verbose

clean:
	rm -rf $(VENV) .venv-ls .venv-fo build site *.egg-info .pytest_cache
