# The two commands: `make reproduce` and `make test`. Both create .venv on first use.
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= smoke
DATA    ?= data
RESULTS ?= results
export PYTHONUNBUFFERED := 1
export MPLBACKEND := Agg

.PHONY: reproduce test test-fast lint dataset notebooks nbval lock clean-venv

$(STAMP): requirements.lock pyproject.toml
	@echo ">> creating $(VENV) and installing the pinned stack (about 2 minutes, once)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip==26.3" "setuptools==80.9.0"
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

## reproduce: build the embedded dataset, run every notebook with papermill, regenerate results/
##            (tables, figures, summaries, REPORT.md; executed notebooks and runs/ are untracked)
reproduce: $(STAMP)
	$(BIN)/python -m aaclip.reproduce --profile $(PROFILE) --data $(DATA) --results $(RESULTS)

## test: lint, then the whole test suite (unit, integration, notebooks: papermill batch runs,
##       then nbval over the committed notebooks, smoke in quick mode); two pytest-xdist
##       workers, each taking whole files (tests/conftest.py orders the longest first)
test: $(STAMP)
	$(BIN)/ruff check aaclip data_prep tests
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests ; \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## test-fast: the edit-test loop: no notebooks, no learning or other slow tests
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not notebooks" \
	  --durations=10 tests ; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check aaclip data_prep tests

## notebooks: store the outputs nbval compares (each notebook's summary cell, smoke quick)
notebooks: $(STAMP)
	$(BIN)/python -m aaclip.reproduce --store-outputs

## nbval: only nbval over the committed notebooks (smoke quick, in a scratch folder)
nbval: $(STAMP)
	@d=$$(mktemp -d); env -u MKL_ENABLE_INSTRUCTIONS AACLIP_ROOT=$$d AACLIP_QUICK=1 \
	  OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 \
	  PYDEVD_DISABLE_FILE_VALIDATION=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/*.ipynb; \
	  rc=$$?; rm -rf $$d; exit $$rc

## dataset: only build the embedded synthetic dataset
dataset: $(STAMP)
	$(BIN)/python -m data_prep.synthetic --out $(DATA)/synthetic

## lock: re-pin requirements.lock from the current .venv
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^aaclip' > requirements.lock.new && mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
