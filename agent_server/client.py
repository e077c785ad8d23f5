"""A client for a running agent-server: typed frames over SSE, resumed after a drop.

``AgentClient`` (async) and ``SyncAgentClient`` have the same methods. ``stream()``
yields the protocol's frame models; if the connection drops mid-run it reconnects to
``GET /runs/{id}/stream`` with ``Last-Event-ID`` (the run keeps going on the server:
``on_disconnect=continue``), so no frame is lost or repeated. A stream the server ends
early (a reader that fell too far behind), a *stream error* (an ``error`` frame with
``seq`` 0: ``broker_unavailable``, ``shutting_down``) and a 503 while resuming are
treated the same way: the client resumes until ``[DONE]``, and gives up only after
``RESUME_FOR`` seconds without a frame.
Errors answered by the server raise :class:`AgentServerError` with its ``code`` and
``message``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse

from agent_server.frames import BaseFrame, parse_frame

RESUME_FOR = 30.0  # seconds a join keeps trying to resume a run


class _Interrupted(Exception):
    """The stream ended before the run did (a stream error, a 503): resume it."""


def _frame(data: str) -> BaseFrame:
    frame = parse_frame(data)
    if frame.seq == 0:  # a stream error (docs/protocol.md): the run goes on elsewhere
        raise _Interrupted(data)
    return frame


def _check_resumable(response: httpx.Response) -> None:
    if response.status_code == 503:  # the broker is away, or this worker stops
        raise _Interrupted(response.text)
    _raise_for(response)


class _Retry:
    """When to resume a stream that ended before ``[DONE]``, and when to give up.

    A stream that delivered frames before it ended (the server drops a reader that falls
    too far behind; a proxy cuts a long stream) resumes at once. One that delivered
    nothing backs off, and after ``RESUME_FOR`` seconds without a frame the run is given up.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.attempt = 0
        self.deadline = time.monotonic() + RESUME_FOR

    def pause(self, *, progressed: bool) -> float:
        if progressed:
            self.attempt, self.deadline = 0, time.monotonic() + RESUME_FOR
            return 0.0
        if time.monotonic() >= self.deadline:
            raise AgentServerError(0, "unreachable", f"could not resume run {self.run_id}")
        self.attempt += 1
        return min(2.0, 0.1 * 2.0**self.attempt)


class AgentServerError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    raise AgentServerError(
        response.status_code,
        str(body.get("code", "http_error")),
        str(body.get("message", response.reason_phrase)),
    )


def _body(graph: str, message: str | None, input: Any, thread_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"graph": graph, "on_disconnect": "continue"}
    if message is not None:
        body["message"] = message
    else:
        body["input"] = input
    if thread_id is not None:
        body["thread_id"] = thread_id
    return body


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class AgentClient:
    """Async client: ``async for frame in client.stream("agent", "hi")``."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 60,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        """``transport`` is httpx's: socket options, a proxy, a Unix socket, retries."""
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout,
            transport=transport,
        )  # fmt: skip
        self.runs = _AsyncRuns(self)
        self.threads = _AsyncThreads(self)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, url, **kwargs)
        _raise_for(response)
        return response.json()

    async def graphs(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/graphs"))["graphs"])

    async def tools(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/tools"))["tools"])

    async def wait(
        self, graph: str, message: str | None = None, *, input: Any = None,
        thread_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        body = _body(graph, message, input, thread_id)
        result: dict[str, Any] = await self._json("POST", "/runs/wait", json=body)
        return result

    async def stream(
        self, graph: str, message: str | None = None, *, input: Any = None,
        thread_id: str | None = None,
    ) -> AsyncIterator[BaseFrame]:  # fmt: skip
        run_id: str | None = None
        last = 0
        try:
            async with aconnect_sse(
                self.http, "POST", "/runs/stream", json=_body(graph, message, input, thread_id)
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                _raise_for(source.response)
                run_id = source.response.headers.get("x-run-id")
                async for event in source.aiter_sse():
                    if not event.data:
                        continue  # a block with only ``retry:`` or ``id:``: no frame
                    if event.data == "[DONE]":
                        return
                    frame = _frame(event.data)
                    last = frame.seq
                    yield frame
        except (httpx.TransportError, _Interrupted):
            if run_id is None:
                raise
        if run_id is not None:  # the connection dropped: resume from the last seq seen
            async for resumed in self.runs.join(run_id, after=last):
                yield resumed


class _AsyncRuns:
    def __init__(self, client: AgentClient) -> None:
        self.client = client

    async def get(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.client._json("GET", f"/runs/{run_id}")
        return result

    async def cancel(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.client._json("POST", f"/runs/{run_id}/cancel")
        return result

    async def join(self, run_id: str, *, after: int = 0) -> AsyncIterator[BaseFrame]:
        """A run's frames after ``after``, live, to ``[DONE]``; resumes after every drop."""
        retry = _Retry(run_id)
        while True:
            resumed_at = after
            try:
                async with aconnect_sse(
                    self.client.http, "GET", f"/runs/{run_id}/stream",
                    headers={"Last-Event-ID": str(after)},
                ) as source:  # fmt: skip
                    if source.response.status_code >= 400:
                        await source.response.aread()
                    _check_resumable(source.response)
                    async for event in source.aiter_sse():
                        if not event.data:
                            continue
                        if event.data == "[DONE]":
                            return
                        frame = _frame(event.data)
                        after = frame.seq
                        yield frame
            except (httpx.TransportError, _Interrupted):
                pass
            await asyncio.sleep(retry.pause(progressed=after > resumed_at))


class _AsyncThreads:
    def __init__(self, client: AgentClient) -> None:
        self.client = client

    async def state(self, thread_id: str, graph: str | None = None) -> dict[str, Any]:
        params = {"graph": graph} if graph else None
        result: dict[str, Any] = await self.client._json(
            "GET", f"/threads/{thread_id}/state", params=params
        )
        return result


class SyncAgentClient:
    """The same as :class:`AgentClient`, blocking: ``for frame in client.stream(...)``."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 60,
        transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout,
            transport=transport,
        )  # fmt: skip
        self.runs = _SyncRuns(self)
        self.threads = _SyncThreads(self)

    def __enter__(self) -> SyncAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.http.request(method, url, **kwargs)
        _raise_for(response)
        return response.json()

    def graphs(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/graphs")["graphs"])

    def tools(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/tools")["tools"])

    def wait(
        self, graph: str, message: str | None = None, *, input: Any = None,
        thread_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        result: dict[str, Any] = self._json(
            "POST", "/runs/wait", json=_body(graph, message, input, thread_id)
        )
        return result

    def stream(
        self, graph: str, message: str | None = None, *, input: Any = None,
        thread_id: str | None = None,
    ) -> Iterator[BaseFrame]:  # fmt: skip
        run_id: str | None = None
        last = 0
        try:
            with connect_sse(
                self.http, "POST", "/runs/stream", json=_body(graph, message, input, thread_id)
            ) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                _raise_for(source.response)
                run_id = source.response.headers.get("x-run-id")
                for event in source.iter_sse():
                    if not event.data:
                        continue  # a block with only ``retry:`` or ``id:``: no frame
                    if event.data == "[DONE]":
                        return
                    frame = _frame(event.data)
                    last = frame.seq
                    yield frame
        except (httpx.TransportError, _Interrupted):
            if run_id is None:
                raise
        if run_id is not None:
            yield from self.runs.join(run_id, after=last)


class _SyncRuns:
    def __init__(self, client: SyncAgentClient) -> None:
        self.client = client

    def get(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client._json("GET", f"/runs/{run_id}")
        return result

    def cancel(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client._json("POST", f"/runs/{run_id}/cancel")
        return result

    def join(self, run_id: str, *, after: int = 0) -> Iterator[BaseFrame]:
        retry = _Retry(run_id)
        while True:
            resumed_at = after
            try:
                with connect_sse(
                    self.client.http, "GET", f"/runs/{run_id}/stream",
                    headers={"Last-Event-ID": str(after)},
                ) as source:  # fmt: skip
                    if source.response.status_code >= 400:
                        source.response.read()
                    _check_resumable(source.response)
                    for event in source.iter_sse():
                        if not event.data:
                            continue
                        if event.data == "[DONE]":
                            return
                        frame = _frame(event.data)
                        after = frame.seq
                        yield frame
            except (httpx.TransportError, _Interrupted):
                pass
            time.sleep(retry.pause(progressed=after > resumed_at))


class _SyncThreads:
    def __init__(self, client: SyncAgentClient) -> None:
        self.client = client

    def state(self, thread_id: str, graph: str | None = None) -> dict[str, Any]:
        params = {"graph": graph} if graph else None
        result: dict[str, Any] = self.client._json(
            "GET", f"/threads/{thread_id}/state", params=params
        )
        return result
