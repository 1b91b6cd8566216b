# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
# Demo campaign: four replicate 96-well plates (plate N simulated with seed N).
DEMO_SITES ?= 1
DEMO_SIZE ?= 540
# Wells per segmentation / measurement job: two jobs per demo plate (fewer process start-ups
# on a 2-core machine; the workflow's default for real plates is 24).
DEMO_WELLS_PER_SHARD ?= 48
CORES ?= all

.PHONY: demo demo-lincs test venv lint format demo-data clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

DEMO_PLATES := 1 2 3 4

$(DEMO)/DEMO-P%/platemap.csv: | venv
	$(BIN)/hcsflow simulate $(DEMO)/DEMO-P$* --plate DEMO-P$* --wells 96 --sites $(DEMO_SITES) --size $(DEMO_SIZE) --seed $*

demo-data: $(foreach n,$(DEMO_PLATES),$(DEMO)/DEMO-P$(n)/platemap.csv)

# Real well-level profiles (one LINCS Cell Painting plate) for the profile-level stages, when the
# shared data folder sits beside the repository: `make demo-lincs`.
LINCS := ../shared/data/lincs_profiles/SQ00015054_normalized_feature_select.csv.gz

# One thread per job: the demo's jobs are short and keep about one core busy each even when
# given two, so two single-threaded jobs at a time finish the campaign sooner on 2 cores.
DEMO_THREADS ?= --set-threads illumination=1 segment=1 measure=1 profiles=1

demo: venv demo-data
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) $(DEMO_THREADS) \
	  --config 'shards={wells_per_shard: $(DEMO_WELLS_PER_SHARD)}'
	@echo
	@echo "Demo finished: four simulated plates, raw images -> report."
	@echo "  Per-cell tables: $(CURDIR)/results/cells/"
	@echo "  Report:          $(CURDIR)/results/report/index.html"

demo-lincs: venv
	@test -f $(LINCS) || { echo "$(LINCS) not found"; exit 2; }
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) \
	  --config input_profiles=$(LINCS) results=results_lincs
	@echo "  Real LINCS plate (profiles -> activity, consistency, clusters): $(CURDIR)/results_lincs/report/index.html"

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
	rm -rf $(DEMO) results results_lincs .snakemake
