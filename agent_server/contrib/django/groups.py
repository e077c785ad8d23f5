"""Rooms over a Channels layer: each thread is a group, and runs' frames travel through it.

Every run executed in a process is followed by a publisher task there, which sends each
batch of its frames (paced like any stream, see :mod:`agent_server.streams`) to the
thread's group. A consumer that joined the thread's room, or subscribed to the thread,
is in the group and forwards what arrives. With ``channels_redis`` this spans every
process of the site; with the in-memory layer, one process.

Decisions (read before changing):

- A Channels layer drops a message, silently, for a member whose channel is full
  (``capacity``, 100 by default; ``group_send`` never waits). A member that does not
  keep up therefore misses whole batches. Each group message carries the run's batch
  number, so a member sees the gap at the next one and catches up from the run's log
  (:meth:`GroupSession.deliver`), which it can read when the run is in this process or
  the processes share a broker (``AGENT_SERVER_BROKER_URL``). When nothing arrives after
  the gap (the run's last batches were dropped), or the log is out of reach, the client
  sees a gap in ``seq`` or no terminal frame: it sends ``subscribe`` with the run id
  and ``after`` set to the last seq it has, and gets the rest from the log.
- A consumer that follows a run from its log (it started the run, subscribed to it, or
  caught up after a gap) skips that run's group messages: one path per run, so a frame
  is never sent twice.
- Presence goes through the group too. Its ``members`` are this process's members, or
  every process's when they share a broker (membership is kept there; a Channels layer
  cannot list a group).
- Group names are derived from the thread id (a hash: thread ids may hold characters
  and lengths that group names may not).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Any

from agent_server.auth import User
from agent_server.connections import SendText, frames_message, presence_message, presence_texts
from agent_server.frames import TERMINAL_TYPES
from agent_server.runs import RemoteRun, Run
from agent_server.state import AppState
from agent_server.streams import Streams
from agent_server.supervise import cancel_all
from agent_server.ws import CLOSE_SLOW, Close, Session

logger = logging.getLogger("agent_server.contrib.django")

FRAMES = "agent_server.frames"  # handled by AgentConsumer.agent_server_frames
PRESENCE = "agent_server.presence"  # handled by AgentConsumer.agent_server_presence
# How many runs a session remembers it follows from the log, or has forwarded.
REMEMBERED = 1000


def group_name(thread_id: str) -> str:
    """The Channels group of a thread's room."""
    digest = hashlib.blake2b(thread_id.encode(), digest_size=16).hexdigest()
    return f"agent-server.thread.{digest}"


class GroupPublisher:
    """Sends every run of this process to its thread's group (a ``RunManager.on_submit``
    callback), batch by batch, until its terminal frame."""

    def __init__(self, layer: Any, streams: Streams) -> None:
        self.layer = layer
        self.streams = streams
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, run: Run) -> None:
        task = asyncio.create_task(self.publish(run), name=f"agent-server-group-{run.run_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def publish(self, run: Run) -> None:
        group = group_name(run.thread_id)
        streams = self.streams
        number = 0
        try:
            with streams.stream():
                async for batch in run.follow(max_batch=streams.max_batch):
                    number += 1
                    await self.layer.group_send(
                        group,
                        {
                            "type": FRAMES,
                            "thread_id": run.thread_id,
                            "run_id": run.run_id,
                            "owner": run.owner,
                            "batch": number,
                            "last_seq": batch[-1].seq,
                            "final": batch[-1].type in TERMINAL_TYPES,
                            "text": frames_message([entry.data for entry in batch]),
                        },
                    )
                    if not run.finished:
                        await streams.pace()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The layer failed (Redis down): members catch up from the log, see above.
            logger.exception("could not publish run %s to its group", run.run_id)

    async def close(self, timeout: float = 1.0) -> None:
        """Let publishers send their runs' last frames, then stop them."""
        pending = [task for task in self.tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        await cancel_all(pending)


class GroupSession(Session):
    """The WebSocket protocol with its rooms on a Channels layer (see the module)."""

    fanout = False  # the layer's groups fan out

    def __init__(
        self,
        state: AppState,
        *,
        send_text: SendText,
        close: Close,
        user: User | None,
        layer: Any,
        channel_name: str,
    ) -> None:
        super().__init__(state, send_text=send_text, close=close, user=user)
        self.layer = layer
        self.channel_name = channel_name
        # runs followed from their log, whose group messages are skipped
        self.from_log: OrderedDict[str, None] = OrderedDict()
        # run id -> (batch number, last seq) forwarded from the group
        self.forwarded: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # the group's text of this session's own join in a large room -> its copy with
        # the member list (the group carries no list: the layer copies a message per member)
        self.own_presence: dict[str, str] = {}

    def follow(self, run: Run | RemoteRun, after: int = 0) -> None:
        _remember(self.from_log, run.run_id, None)
        self.forwarded.pop(run.run_id, None)
        super().follow(run, after)

    # -- rooms -----------------------------------------------------------------------

    async def join(self, thread_id: str) -> None:
        await self.connections.enter(self.connection, thread_id)
        await self.layer.group_add(group_name(thread_id), self.channel_name)
        await self.announce(thread_id, "join")
        self.follow_thread(thread_id)

    async def leave(self, thread_id: str) -> None:
        if await self.connections.exit(self.connection, thread_id):
            if thread_id not in self.connection.threads:
                await self.layer.group_discard(group_name(thread_id), self.channel_name)
            await self.announce(thread_id, "leave")
        self.unfollow_thread(thread_id)

    async def watch(self, thread_id: str) -> None:
        self.connection.threads.add(thread_id)
        await self.layer.group_add(group_name(thread_id), self.channel_name)
        self.follow_thread(thread_id)

    async def unwatch(self, thread_id: str) -> None:
        self.connection.threads.discard(thread_id)
        if thread_id not in self.connection.rooms:
            await self.layer.group_discard(group_name(thread_id), self.channel_name)
        self.unfollow_thread(thread_id)

    async def announce(self, thread_id: str, event: str) -> None:
        message = presence_message(thread_id, self.connection, event)
        members = await self.connections.member_list(thread_id)
        limit, me = self.connections.presence_members_max, self.connection.client_id
        text, own = presence_texts([message], members, limit, (me,))
        if me in own:
            self.own_presence[text] = own[me]
        await self.layer.group_send(
            group_name(thread_id), {"type": PRESENCE, "thread_id": thread_id, "text": text}
        )

    async def end(self) -> None:
        if not self.ended:
            for thread_id in [*self.connection.rooms, *self.connection.threads]:
                try:
                    if thread_id in self.connection.rooms:
                        await self.leave(thread_id)
                    else:
                        await self.unwatch(thread_id)
                except Exception:  # the layer failed: its groups expire by themselves
                    logger.warning("could not leave the group of thread %s", thread_id)
        await super().end()

    # -- group messages ------------------------------------------------------------------

    async def deliver(self, event: dict[str, Any]) -> None:
        """A batch of a run's frames from its thread's group."""
        run_id: str = event["run_id"]
        thread_id: str = event["thread_id"]
        user = self.connection.user_id
        if (
            self.closed
            or run_id in self.from_log
            or (thread_id not in self.connection.rooms and thread_id not in self.connection.threads)
            # A watcher who joined before the thread had an owner sees nothing of
            # somebody else's runs on it (as fan_out in agent_server.ws).
            or event["owner"] not in (None, user)
            or not self.state.runs.owned_thread(thread_id, user)
        ):
            return
        number, seq = self.forwarded.get(run_id, (0, 0))
        if event["batch"] != number + 1:
            # A batch was dropped (a full channel), or the room was joined mid-run:
            # the run's log has every frame.
            run = await self.state.runs.find(run_id)
            if run is not None:
                self.follow(run, seq)
                return
        if event["final"]:
            self.forwarded.pop(run_id, None)
        else:
            _remember(self.forwarded, run_id, (event["batch"], event["last_seq"]))
        await self.forward(event["text"])

    async def present(self, event: dict[str, Any]) -> None:
        """A ``presence`` message from a room's group (thread subscribers skip it)."""
        if event["thread_id"] in self.connection.rooms and not self.closed:
            text = event["text"]
            await self.forward(self.own_presence.pop(text, text))

    async def forward(self, text: str) -> None:
        try:
            await self.connection.send(text)
        except TimeoutError:
            await self.close_soon(CLOSE_SLOW, "too slow to keep up; reconnect and resume")


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > REMEMBERED:
        table.popitem(last=False)
