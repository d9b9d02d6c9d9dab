# MTAL — every target does its own set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 9090
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv lock run test lint bench demo demo-pool simulate results clean services ls-venv redis

# The backend's venv holds exactly the dev lock (runtime + test tools, every package pinned with hashes);
# pip-sync removes what an older lock installed. `make lock` refreshes the locks from the *.in files.
$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements-dev.txt 2> >(grep -v "is ignored" >&2)
	$(BIN)/pip-sync -q requirements-dev.txt 2> >(grep -v "is ignored" >&2)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored" >&2)
	$(BIN)/pip check
	$(BIN)/python -c "import torch, torchvision; torchvision.ops.nms"
	touch $@

venv: $(BIN)/.installed

# Refresh the three locks from the hand-kept pins (*.in) with pip-tools (pip's own resolver, so the
# machine's pip configuration applies); UPGRADE=1 also moves every unpinned package to its newest release.
LOCK_FLAGS := -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	$(if $(UPGRADE),--upgrade)
lock: venv
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) -o requirements.txt requirements.in
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) -o requirements-dev.txt requirements-dev.in
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) -o requirements-labelstudio.txt \
		requirements-labelstudio.in
	$(BIN)/python -m pytest -q tests/test_locks.py

# The backend on $(PORT): gunicorn, 1 process (the embedded queue lives in it when REDIS_URL is unset).
run: venv
	PORT=$(PORT) $(BIN)/gunicorn -c backend/web/gunicorn.conf.py backend.web.wsgi:app

lint: venv
	$(BIN)/ruff check .

# Real services for the integration and end-to-end suites: redis-server (Debian package) and
# Label Studio 1.23.2 in its own cached virtualenv (~/.cache/mtal/ls-venv, from requirements-labelstudio.txt;
# its pins conflict with ours; a changed lock rebuilds it).
ls-venv:
	scripts/ls_venv.sh >/dev/null

redis:
	scripts/ensure_redis.sh

services: ls-venv redis

test: venv lint services
	$(BIN)/python -m pytest

# Label Studio + the backend (embedded queue) + a ranked sample project; prints where to click.
demo: venv ls-venv
	$(BIN)/python scripts/demo.py

demo-pool: venv ls-venv
	$(BIN)/python scripts/demo_pool.py

# Every bench.* module, their METRIC lines collected into one table (runs/bench-results.md).
bench: venv redis
	$(BIN)/python -m bench.collect --out runs/bench-results.md --json runs/bench-results.json --timeout 1800 \
		--module-args "loop=--sizes 1000,10000 --image-size 32"

# The default active-learning simulation (CPU; the GPU when present) and docs/results.md from it.
simulate: venv
	$(BIN)/mtal simulate --config default --out runs/simulate-default

results: venv
	scripts/results.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
