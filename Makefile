# Quick start: `make demo` runs the demo federation, `make test` runs the tests. Both set up .venv first.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.fedgai-installed
WORKSPACE ?= runs/demo
STUDIOS ?= 8

.PHONY: install demo local-demo poc deploy test lint jobs wheel bench clean prior

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## the main job: an 8-studio demo federation in NVFlare's simulator (quick profile), one process per studio;
## prints one line per round (aggregated, held-out val_* means, ETA), full logs under $(WORKSPACE)/nvflare;
## then scores every studio on its held-out test pairs (fedgai evaluate) and prints the report's path
demo: install
	$(BIN)/fedgai simulate --studios $(STUDIOS) --workspace $(WORKSPACE)
	$(BIN)/fedgai evaluate $(WORKSPACE) --out $(WORKSPACE)/evaluation
	@echo "report (galleries, scores, bytes per round): $(abspath $(WORKSPACE))/evaluation/report.html"
	@echo "studio page for a designer (any studio-NN): $(BIN)/fedgai studio --model $(WORKSPACE)/studios/studio-01, then open http://127.0.0.1:8765/"

## one studio, local training only
local-demo: install
	test -d runs/demo-data || $(BIN)/fedgai data demo --studios $(STUDIOS) --out runs/demo-data
	$(BIN)/fedgai train-local --studio runs/demo-data/$$(ls runs/demo-data | head -n 1) --epochs 5 --out runs/local

## POC mode on localhost: cloud server + 2 studios + admin, job submitted through the Session API
poc: install
	$(BIN)/python poc/run_poc.py --profile test --studios 2

## provisioned deployment on localhost: `nvflare provision`, start kits, submit jobs/fedgai and jobs/fedgai_he
deploy: install
	$(BIN)/python provisioning/deploy.py --profile test

## the test suite (pytest's "no tests collected", exit 5, is not a failure); tests that log an NVFlare admin in run
## last (tests/conftest.py); the 20 slowest tests are listed at the end
test: install
	$(BIN)/python -m pytest -q --durations=20; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: install
	$(BIN)/ruff check .

## the job folders (configuration only) for the installed fedgai version; a test checks jobs/ is up to date
jobs: install
	$(BIN)/fedgai job export --out jobs

## the pinned fedgai wheel every site installs (dist/fedgai-<version>-py3-none-any.whl; docs/deployment.md)
wheel: install
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

## the public prior (custom/fedgai/prior_build.py: demo garments + xdog/contour edge sketches, no studio's data) for the
## quick profile, plain and record-level (per-sample) networks, cached where train.prior=auto finds it
## ($FEDGAI_PRIOR_DIR, default ~/.cache/fedgai/priors); PRIOR_SET adds settings, e.g. --set model.image_size=64
PRIOR_SET ?=
prior: install
	$(BIN)/fedgai prior build --profile quick --set train.unpaired_batch=0 $(PRIOR_SET)
	$(BIN)/fedgai prior build --profile quick --set train.unpaired_batch=0 --set privacy.dp=record $(PRIOR_SET)

bench: install
	$(BIN)/python benchmarks/local_train.py
	$(BIN)/python benchmarks/he_cost.py

clean:
	rm -rf runs
