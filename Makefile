# MTAL — every target does its own set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 9090
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv run test lint bench demo simulate results clean services ls-venv redis

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt 2> >(grep -v "is ignored" >&2)
	$(BIN)/pip install -q --no-deps -e . 2> >(grep -v "is ignored" >&2)
	$(BIN)/python -c "import torch, torchvision; torchvision.ops.nms"
	touch $@

venv: $(BIN)/.installed

# The backend on $(PORT): gunicorn, 1 process (the embedded queue lives in it when REDIS_URL is unset).
run: venv
	PORT=$(PORT) $(BIN)/gunicorn -c backend/web/gunicorn.conf.py backend.web.wsgi:app

lint: venv
	$(BIN)/ruff check .

# Real services for the integration and end-to-end suites: redis-server (Debian package) and
# Label Studio 1.23.2 in its own cached virtualenv (~/.cache/mtal/ls-venv; its pins conflict with ours).
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
