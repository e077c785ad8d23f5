"""Logging set-up: every record carries the run it belongs to; JSON lines on request.

Records emitted while a run's task executes get ``run_id`` and ``thread_id`` from a
context variable (:data:`agent_server.runs.current_run`), so graph, tool and server
code need not pass them around. ``--log-json`` writes one JSON object per line for log
shippers; the default stays readable in a terminal.
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

import orjson

from agent_server.runs import current_run

# Not copied into a JSON record: the LogRecord's own attributes, and uvicorn's
# ``color_message`` (its message template with terminal colour codes).
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "color_message",
}


class RunContextFilter(logging.Filter):
    """Adds ``run_id`` and ``thread_id`` (or ``None``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = current_run.get()
        if not hasattr(record, "run_id"):
            record.run_id = run.run_id if run is not None else None
        if not hasattr(record, "thread_id"):
            record.thread_id = run.thread_id if run is not None else None
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=repr).decode()


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        # The run goes on the message line, before any traceback, so grep finds both.
        text = super().formatMessage(record)
        run_id = getattr(record, "run_id", None)
        return f"{text} [run {run_id}]" if run_id else text


def log_config(level: str = "info", *, json: bool = False) -> dict[str, Any]:
    """A ``logging.config`` dict for our loggers and uvicorn's, JSON or text."""
    formatter = (
        {"()": JSONFormatter}
        if json
        else {"()": TextFormatter, "fmt": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["run"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"run": {"()": RunContextFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "agent_server": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level.upper(), "propagate": False},
        },
    }
