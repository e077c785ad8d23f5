"""What a LangGraph API run's ``webhook`` receives, once the run has ended: LangGraph's
payload, the Run object with ``status``, ``values``, ``error`` (a run that ended with an
error frame: failed, timed out, cancelled) and the times. Delivery, retries and the SSRF
guard are :mod:`agent_server.webhooks`'.

The hook is one of the run manager's ``on_finish`` callbacks, so it fires on the worker
that executed the run, whichever worker accepted it (a queued run's webhook travels in
its job). The payload is built once, in the delivery's task, never in the run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent_server.frames import Error
from agent_server.protocols.langgraph.http import APIError, iso
from agent_server.protocols.langgraph.parts import dumps_part
from agent_server.protocols.langgraph.runs import run_json
from agent_server.runs import Run
from agent_server.state import AppState
from agent_server.webhooks import WebhookRefused


async def check_webhook(state: AppState, url: str) -> None:
    """422 for a URL the policy refuses."""
    try:
        await state.webhooks.check(url)
    except WebhookRefused as exc:
        raise APIError(422, f"Webhook URL refused: {exc}", "webhook_refused") from None


def payload(run: Run) -> bytes:
    body = run_json(run)
    body.update(
        run_started_at=iso(run.started_at),
        run_ended_at=iso(run.ended_at),
        webhook_sent_at=iso(time.time()),  # once: every try sends the same bytes
        values=run.values,
    )
    if isinstance(run.final, Error):
        body["error"] = {"error": run.final.code, "message": run.final.message}
    return dumps_part(body)


def notify(state: AppState) -> Callable[[Run], None]:
    """The ``on_finish`` callback that sends a finished run's webhook, if it has one."""

    def finished(run: Run) -> None:
        url = state.runs.webhooks.pop(run.run_id, None)
        if url is not None:
            state.webhooks.send(url, run.run_id, lambda: payload(run))

    return finished
