#!/bin/sh
# The LangGraph API tests (tests/test_langgraph_api.py, Python and JS clients) against
# LangGraph's own dev server serving the same graphs, to check that they test LangGraph's
# protocol and not our reading of it. `make test-langgraph-dev` runs it; the differences
# it finds are the ones docs/langgraph-api.md lists (those tests are marked for ours).
set -eu
cd "$(dirname "$0")/../.."
VENV=.venv-langgraph
PORT=${LANGGRAPH_DEV_PORT:-2031}
if [ ! -x "$VENV/bin/langgraph" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "langgraph-cli[inmem]" -e .
fi
PYTHONPATH="$PWD" "$VENV/bin/langgraph" dev --config tests/langgraph_dev/langgraph.json \
    --host 127.0.0.1 --port "$PORT" --no-browser --no-reload > .langgraph-dev.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
tries=0
until curl -sf -X POST "http://127.0.0.1:$PORT/assistants/search" -d '{}' >/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ]; then echo "langgraph dev did not start: see .langgraph-dev.log"; exit 1; fi
    sleep 0.5
done
LANGGRAPH_API_URL="http://127.0.0.1:$PORT" .venv/bin/python -m pytest tests/test_langgraph_api.py \
    tests/test_crons.py tests/test_webhooks.py tests/test_after_seconds.py \
    tests/test_store.py tests/test_assistants.py tests/test_thread_stream.py \
    -p no:cacheprovider "$@"
