# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
# Demo campaign: two replicate 96-well plates simulated with different seeds.
DEMO_SITES ?= 2
DEMO_SIZE ?= 540
CORES ?= all

.PHONY: demo test venv lint format demo-data clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(DEMO)/DEMO-P1/platemap.csv: | venv
	$(BIN)/hcsflow simulate $(DEMO)/DEMO-P1 --plate DEMO-P1 --wells 96 --sites $(DEMO_SITES) --size $(DEMO_SIZE) --seed 1

$(DEMO)/DEMO-P2/platemap.csv: | venv
	$(BIN)/hcsflow simulate $(DEMO)/DEMO-P2 --plate DEMO-P2 --wells 96 --sites $(DEMO_SITES) --size $(DEMO_SIZE) --seed 2

demo-data: $(DEMO)/DEMO-P1/platemap.csv $(DEMO)/DEMO-P2/platemap.csv

demo: venv demo-data
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)
	@echo
	@echo "Demo finished. Results are in $(CURDIR)/results:"
	@ls results
	@test ! -f results/report/index.html || echo "Report: $(CURDIR)/results/report/index.html"

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check hcsflow tests workflow_scripts benchmarks
	$(BIN)/ruff format --check hcsflow tests workflow_scripts benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: venv
	$(BIN)/ruff format hcsflow tests workflow_scripts benchmarks
	$(BIN)/snakefmt Snakefile rules

clean-demo:
	rm -rf $(DEMO) results .snakemake
