# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint bench bench-scale bench-peers clean js test-langgraph-dev

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agent-server needs Python 3.11+ (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The official JS clients the interop tests run (only where Node is installed).
JS_STAMP := tests/js/node_modules/.installed-stamp
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/js --no-audit --no-fund && touch $(JS_STAMP); \
	else echo "npm not found: the JS client tests will be skipped"; fi

js: $(JS_STAMP)

run: install
	$(BIN)/agent-server serve $(ARGS)

test: install js
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The LangGraph API tests against LangGraph's own dev server (its own venv; not in `test`).
test-langgraph-dev: install js
	tests/langgraph_dev/run.sh

lint: install
	$(BIN)/ruff check agent_server tests graphs tools bench examples
	$(BIN)/ruff format --check agent_server tests graphs tools bench examples
	$(BIN)/mypy agent_server

bench: install
	$(BIN)/python bench/sse_transport.py
	$(BIN)/python bench/stream_overhead.py
	$(BIN)/python bench/langgraph_api.py

# Connection scale (docs/performance.md, issue 19): 10,000 idle sockets, then one run
# watched by 1,000 subscribers over two workers (needs Redis and PostgreSQL).
bench-scale: install
	$(BIN)/python bench/connections.py
	$(BIN)/python bench/socket_writes.py
	$(BIN)/python bench/fanout.py --token-delay 0.005
	$(BIN)/python bench/fanout.py --token-delay 0.005 --mode threadstream
	$(BIN)/python bench/fanout.py

# agent-server against `langgraph dev` and Aegra on the same graph (docs/performance.md).
# Builds .venv-langgraph and .venv-aegra once; Aegra needs the local PostgreSQL.
bench-peers: install
	$(BIN)/python bench/peers.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-langgraph .venv-langgraph.log .venv-aegra .venv-aegra.log .langgraph_api .langgraph-dev.log .pytest_cache .mypy_cache .ruff_cache .agent-server tests/js/node_modules
