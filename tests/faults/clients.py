"""Stream clients that record everything they receive, for fault tests.

A follower runs as an asyncio task (so one test holds dozens) and fills a
:class:`Recording`: every run frame in arrival order across all its connections, whether
``data: [DONE]`` ended the last one, and one :class:`Attempt` per connection saying how it
ended. Nothing is filtered or deduplicated: the checkers judge what a client would see.

Decisions (read before changing):

- With a :class:`Reconnect` policy a follower behaves as a careful client: after a
  dropped connection (closed without ``[DONE]``: a killed worker, a reset), or a
  *stream error* (an ``error`` frame with ``seq`` 0: ``broker_unavailable``,
  ``shutting_down``; docs/protocol.md), it reconnects with ``Last-Event-ID`` (SSE) or
  ``subscribe`` + ``after`` (WebSocket) set to the last seq it saw, to the policy's next
  URL. Such an error frame is kept in the attempt, not in ``frames``: it ends a
  connection, not the run. ``[DONE]`` otherwise means the
  stream is over, final frame or not (the checkers then complain). Without a policy,
  the first connection's end is the recording's end.
- ``[DONE]`` is recorded per connection; ``Recording.done`` is the last one's.
- Times are ``time.monotonic()`` so a test can subtract the moment it injected a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

TERMINAL = frozenset({"done", "error"})
Frame = dict[str, Any]


@dataclass(frozen=True)
class Reconnect:
    """Where and when a follower reconnects: ``urls`` in turn (base URLs of workers;
    empty: the same one), after ``delay`` s, at most ``attempts`` connections in all."""

    urls: Sequence[str] = ()
    attempts: int = 40
    delay: float = 0.25

    def url(self, attempt: int, first: str) -> str:
        return self.urls[(attempt - 1) % len(self.urls)] if self.urls else first


@dataclass
class Attempt:
    """One connection: where, resuming after which seq, and how it ended."""

    url: str
    after: int
    began: float
    frames: int = 0
    done: bool = False
    resume: bool = False  # ended by an error frame the policy resumes after
    end: str = ""

    def __str__(self) -> str:
        marker = " [DONE]" if self.done else ""
        return f"{self.url} after={self.after}: {self.frames} frames{marker}, {self.end}"


@dataclass
class Recording:
    name: str
    transport: str  # "sse" | "ws"
    run_id: str | None = None
    frames: list[Frame] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    socket_errors: list[Frame] = field(default_factory=list)  # WebSocket, no seq
    ended: float | None = None
    final_at: float | None = None  # when the run's final frame arrived

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if "seq" in f]

    @property
    def last_seq(self) -> int:
        """The seq of the last frame received (what a client resumes after); 0: none."""
        seqs = self.seqs
        return seqs[-1] if seqs else 0

    @property
    def done(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].done

    @property
    def final(self) -> Frame | None:
        """The last frame if it is terminal (``done`` or ``error``)."""
        return self.frames[-1] if self.frames and self.frames[-1]["type"] in TERMINAL else None

    @property
    def outcome(self) -> str:
        """``done``, an error's code, or ``unfinished``."""
        final = self.final
        if final is None:
            return "unfinished"
        return "done" if final["type"] == "done" else str(final.get("code"))

    def describe(self) -> str:
        lines = [f"{self.name} ({self.transport}, run {self.run_id}): {self.outcome}"]
        lines += [f"  attempt {i + 1}: {a}" for i, a in enumerate(self.attempts)]
        lines += [f"  socket error: {e}" for e in self.socket_errors]
        return "\n".join(lines)


class Follower:
    """Base of the SSE and WebSocket followers: the reconnect loop."""

    transport = ""

    def __init__(
        self,
        name: str,
        url: str,
        run_id: str | None = None,
        *,
        after: int = 0,
        reconnect: Reconnect | None = None,
        read_timeout: float = 20.0,
    ) -> None:
        """``url`` is a worker's base URL; ``after`` the seq to start after; a silence of
        ``read_timeout`` s counts as a dead connection."""
        self.url = url
        self.after = after
        self.reconnect = reconnect
        self.read_timeout = read_timeout
        self.recording = Recording(name, self.transport, run_id)
        self.started = asyncio.Event()  # the run id is known and a first frame came
        self.task: asyncio.Task[Recording] | None = None

    @property
    def run_id(self) -> str | None:
        return self.recording.run_id

    def start(self) -> asyncio.Task[Recording]:
        self.task = asyncio.create_task(self.run(), name=self.recording.name)
        return self.task

    async def run(self) -> Recording:
        rec = self.recording
        url = self.url
        number = 0
        try:
            while True:
                number += 1
                attempt = Attempt(url, rec.last_seq or self.after, time.monotonic())
                rec.attempts.append(attempt)
                try:
                    await self.connect(attempt, first=number == 1)
                except (httpx.HTTPError, OSError, WebSocketException, TimeoutError) as exc:
                    attempt.end = attempt.end or f"dropped: {type(exc).__name__}: {exc}"
                except Exception as exc:  # e.g. a frame that is not JSON: no resuming that
                    attempt.end = f"client error: {type(exc).__name__}: {exc}"
                    break
                if rec.final is not None or rec.run_id is None:
                    break  # the run ended for this client (or never got an id to resume)
                if attempt.end.startswith("http 204") or (attempt.done and not attempt.resume):
                    break  # the server says this stream is over (a final frame or not)
                if self.reconnect is None or number >= self.reconnect.attempts:
                    break
                await asyncio.sleep(self.reconnect.delay)
                url = self.reconnect.url(number, self.url)
        finally:
            rec.ended = time.monotonic()
            self.started.set()
        return rec

    async def connect(self, attempt: Attempt, *, first: bool) -> None:
        raise NotImplementedError

    def add(self, frame: Frame, attempt: Attempt) -> bool:
        """Record a run frame; True if it ends this connection for reconnecting."""
        rec = self.recording
        if frame.get("type") == "error" and self.reconnect is not None and frame.get("seq") == 0:
            attempt.end = f"error frame {frame.get('code')} (seq {frame.get('seq')})"
            attempt.resume = True
            return True
        rec.frames.append(frame)
        attempt.frames += 1
        if frame.get("type") in TERMINAL:
            rec.final_at = time.monotonic()
        self.started.set()
        return False


class SseFollower(Follower):
    """Follows ``GET /runs/{run_id}/stream`` on ``url`` (a worker's base URL), or, with
    ``body``, starts the run with ``POST /runs/stream`` and resumes it with the GET."""

    transport = "sse"

    def __init__(
        self,
        name: str,
        url: str,
        run_id: str | None = None,
        *,
        body: dict[str, Any] | None = None,
        after: int = 0,
        reconnect: Reconnect | None = None,
        read_timeout: float = 20.0,
    ) -> None:
        super().__init__(
            name, url, run_id, after=after, reconnect=reconnect, read_timeout=read_timeout
        )
        self.body = body

    async def connect(self, attempt: Attempt, *, first: bool) -> None:
        timeout = httpx.Timeout(5.0, read=self.read_timeout)
        async with httpx.AsyncClient(timeout=timeout) as client:
            if first and self.body is not None:
                request = client.build_request("POST", f"{attempt.url}/runs/stream", json=self.body)
            else:
                headers = {"Last-Event-ID": str(attempt.after)} if attempt.after else {}
                request = client.build_request(
                    "GET", f"{attempt.url}/runs/{self.run_id}/stream", headers=headers
                )
            response = await client.send(request, stream=True)
            try:
                await self._read(response, attempt)
            finally:
                await response.aclose()

    async def _read(self, response: httpx.Response, attempt: Attempt) -> None:
        rec = self.recording
        if response.status_code != 200:
            body = (await response.aread())[:200].decode(errors="replace")
            attempt.end = f"http {response.status_code} {body}"
            return
        rec.run_id = rec.run_id or response.headers.get("x-run-id")
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line or not data:
                continue  # id:, retry:, comments (pings), or a blank line after one
            text, data = "\n".join(data), []
            if text == "[DONE]":
                attempt.done = True
                attempt.end = attempt.end or "[DONE]"
                return
            frame = json.loads(text)
            if self.add(frame, attempt):
                continue  # a reconnect code: read on to its [DONE], then resume
        attempt.end = attempt.end or "closed without [DONE]"


class WsFollower(Follower):
    """Subscribes to a run on ``url``'s ``/ws`` (with ``after``), or, with ``message``,
    starts it there with a ``run`` message; resubscribes after a drop (policy)."""

    transport = "ws"

    def __init__(
        self,
        name: str,
        url: str,
        run_id: str | None = None,
        *,
        message: dict[str, Any] | None = None,
        after: int = 0,
        reconnect: Reconnect | None = None,
        read_timeout: float = 20.0,
    ) -> None:
        super().__init__(
            name, url, run_id, after=after, reconnect=reconnect, read_timeout=read_timeout
        )
        self.message = message

    async def connect(self, attempt: Attempt, *, first: bool) -> None:
        ws_url = attempt.url.replace("http://", "ws://", 1) + "/ws"
        async with connect(ws_url, open_timeout=5, max_size=None) as ws:
            if first and self.message is not None:
                await ws.send(json.dumps({"type": "run", **self.message}))
            else:
                request = {"type": "subscribe", "run_id": self.run_id, "after": attempt.after}
                await ws.send(json.dumps(request))
            try:
                await self._read(ws, attempt)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                attempt.end = attempt.end or f"closed {code}"

    async def _read(self, ws: ClientConnection, attempt: Attempt) -> None:
        rec = self.recording
        while True:
            data = json.loads(await asyncio.wait_for(ws.recv(), self.read_timeout))
            for message in data if isinstance(data, list) else [data]:
                kind = message.get("type")
                if "seq" in message:
                    if message.get("run_id") != rec.run_id:
                        continue
                    if self.add(message, attempt):
                        return  # reconnect with ``after``
                    if kind in TERMINAL:
                        attempt.end = "final frame"
                        return
                elif kind == "run_accepted":
                    rec.run_id = message["run_id"]
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind == "error":
                    rec.socket_errors.append(message)
                    attempt.end = f"socket error {message.get('code')}"
                    return


async def gather(followers: Sequence[Follower], timeout: float) -> list[Recording]:
    """Every follower's recording, waiting at most ``timeout`` s in all; the ones still
    going are cancelled, their recordings kept as they stand (``unfinished``)."""
    tasks = [f.task or f.start() for f in followers]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for follower, task in zip(followers, tasks, strict=True):
        if task in pending and follower.recording.attempts:
            follower.recording.attempts[-1].end += f" (still open after {timeout} s)"
    return [f.recording for f in followers]
