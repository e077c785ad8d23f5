"""What every LangGraph API route shares: its error shape, JSON bodies, small parsers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from agent_server.brokers import BrokerUnavailable
from agent_server.cursors import BadCursor, parse_id
from agent_server.protocols.langgraph.parts import dumps_part
from agent_server.runs import Forbidden, RunRejected
from agent_server.schemas import Model, RequestError, read_model
from agent_server.state import AppState


class APIError(Exception):
    def __init__(self, status: int, detail: str, code: str = "error") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code


def json_response(content: Any, status_code: int = 200, **headers: str) -> Response:
    return Response(
        dumps_part(content), status_code, headers=headers, media_type="application/json"
    )


def error_json(status: int, detail: str, code: str, **extra: Any) -> Response:
    return json_response({"detail": detail, "code": code, **extra}, status)


def endpoint(
    handler: Callable[[Request, AppState], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """LangGraph's error shape for everything a handler refuses."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            for name, value in request.path_params.items():  # ids, before any lookup
                parse_id(value, name)
            return await handler(request, request.app.state.agent_server)
        except BadCursor as exc:
            return error_json(422, str(exc), "validation_error")
        except APIError as exc:
            return error_json(exc.status, exc.detail, exc.code)
        except RequestError as exc:
            return error_json(exc.status, exc.message, exc.code)
        except RunRejected as exc:
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
            response = error_json(exc.status, exc.message, exc.code)
            response.headers.update(headers)
            return response
        except Forbidden as exc:
            return error_json(403, exc.message, "forbidden")
        except BrokerUnavailable as exc:
            response = error_json(503, str(exc), "broker_unavailable")
            response.headers["Retry-After"] = "2"
            return response
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "body"
            message = f"{where}: {errors[0]['msg']}" if errors else "invalid request"
            return error_json(422, message, "validation_error", errors=errors)

    return wrapped


async def parse(request: Request, state: AppState, model: type[Model]) -> Model:
    return await read_model(request, model, state.settings.max_body_bytes)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


# -- assistants ----------------------------------------------------------------------


def truthy(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("true", "1", "yes")


def thread_config(thread_id: str, **configurable: Any) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", **configurable}}
