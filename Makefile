# Two entry points: `make run` (set up and run a local node) and `make test` (set up and test).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint tools format bench bench-all clean completions

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever the project metadata or the lock changes.
$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	IAN_DATA_DIR=$${IAN_DATA_DIR:-./.ian-data} $(BIN)/ian node run

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy

# System tools the tests use: promtool (Debian package prometheus) and jq (the runbook's
# queries). Installed when missing and we may (root); otherwise the tests that need them fail
# with the install hint.
SYSTEM_TOOLS := promtool:prometheus jq:jq

tools:
	@for pair in $(SYSTEM_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $$tool (Debian package $$pkg)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends $$pkg >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        apt-get install -y -qq --no-install-recommends $$pkg >/dev/null; }; \
	  else echo "$$tool missing: install Debian's $$pkg package (tests needing it will fail)"; fi; \
	done

test: lint tools
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench tools
	$(BIN)/ruff format src tests bench tools

bench: $(STAMP)
	$(BIN)/python bench/pipeline_bench.py

# Every benchmark, one after the other (25 min on 2026-12-08 with bigstore's 10M store cached;
# building it adds ~6 min once; the README's performance section comes from one run). Tables go
# to the terminal and bench/results/all.txt, JSON to bench/results/.
BENCHES := pipeline http http:--api-workers=2 http:--etcd http:--etcd:--api-workers=2 consensus consensus_memory replication cli bigstore backup prune p2p hostile

bench-all: $(STAMP)
	@mkdir -p bench/results
	@: > bench/results/all.txt
	@for b in $(BENCHES); do \
	  name=$${b%%:*}; args=$$(echo "$${b#$$name}" | tr : " "); \
	  echo "== bench/$${name}_bench.py $$args ($$(date -u +%H:%M:%S), load $$(cut -d' ' -f1-3 /proc/loadavg))" \
	    | tee -a bench/results/all.txt; \
	  ( $(BIN)/python bench/$${name}_bench.py $$args 2>&1; echo "== exit $$?" ) \
	    | tee -a bench/results/all.txt; \
	done; ! grep -q '^== exit [1-9]' bench/results/all.txt

# Shell completion scripts, generated from the Typer app (tests/ian_ops/test_completions.py
# fails when they are stale).
completions: $(STAMP)
	@mkdir -p completions
	$(BIN)/ian completions bash > completions/ian.bash
	$(BIN)/ian completions zsh > completions/_ian
	$(BIN)/ian completions fish > completions/ian.fish

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist

# The CLI reference, generated from the commands' --help (tests/ian_ops/test_cli_docs.py fails
# when it is stale).
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python tools/gen_cli_docs.py docs/cli.md

# A long soak of the consensus simulator (src/ian/consensus/simulator.py): SIM_SEEDS seeds from
# SIM_SEED, N cycling through 1/3/5/7, bounded steps each; prints a table and one JSON line, and
# the replay command of any failing seed.
.PHONY: sim
sim: $(STAMP)
	$(BIN)/python -m ian.consensus.simulator --soak --seed $${SIM_SEED:-1} \
	  --seeds $${SIM_SEEDS:-500} --steps $${SIM_STEPS:-5000} --learners 2
