"""One run's frames to every WebSocket of this worker that follows it: a hub per run.

A run watched by many sockets (a room, a dashboard, a broadcast) used to cost one
follower task per socket: each read the log, built its own message from the same frames
and waited its own pacing window, a window that widens with the number of streams, so
a thousand watchers added up to a lag of half a second. A hub reads the run once (its
log here, or this worker's one mirror of another worker's run), builds each batch's
message once, frames it once (agent_server/ws_protocol.py: the same bytes for every
socket, compressed or not) and writes those bytes to every member, then waits one
window. A thousand members cost a thousand ``write`` calls per batch, not a thousand
trips through Starlette, uvicorn and websockets.

Decisions (read before changing):

- Sending never waits on a socket. A member's send is tried without waiting
  (:func:`~agent_server.connections.try_send`): a socket whose transport is paused (its
  client stopped reading) is taken out of the hub and followed on its own from the last
  frame it received (the per-socket path, bounded by ``max_lag`` and ``send_timeout``
  as before), so one slow socket never delays the others.
- A member is the seq it has received. A socket that subscribes behind the hub (a late
  join, a resume from ``after``) catches up on its own path and joins the hub once it is
  level with it or ahead; the hub sends each member only the frames after its own seq,
  so no frame is skipped or repeated. Ahead of another worker's run, a socket stays on
  its own: a client of a worker that died may hold frames beyond the shared log, and the
  run's final frame is then numbered after its own position. Members level with the
  hub (nearly all) share one encoded message.
- The hub counts as one stream for pacing (``Streams.window``), whatever its members,
  and waits in proportion to what its last delivery took (``Streams.fanout_share``,
  within ``fanout_wait_max``): a thousand writes a delivery, at a fast model's pace
  every few tokens, took the loop from the run it delivers (with 1,000 watchers the
  executing worker's run took twice as long at 200 tokens a second, 6-19 times as
  long at full speed). A delivery yields to the loop every ``fanout_slice`` members,
  so that the run's next token is not held up for a whole delivery either
  (docs/performance.md, "Fan-out at a fast model's pace").
- A transport with its own fan-out (the Django Channels consumer's groups) does not
  use hubs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from agent_server.connections import frames_message, share, try_send
from agent_server.runs import RemoteRun
from agent_server.streams import StreamError, Streams
from agent_server.ws_protocol import SharedFrames

if TYPE_CHECKING:
    from agent_server.runs import LogEntry, Run
    from agent_server.ws import Session

logger = logging.getLogger("agent_server.fanout")


class Member:
    """A socket in a hub: cancelled like a follower task (unsubscribe, the socket going)."""

    __slots__ = ("after", "hub", "session")

    def __init__(self, hub: Hub, session: Session, after: int) -> None:
        self.hub = hub
        self.session = session
        self.after = after  # the seq of the last frame it has received

    def cancel(self) -> bool:
        self.hub.members.pop(self.session, None)
        return True

    def done(self) -> bool:
        return self.hub.members.get(self.session) is not self

    @property
    def task(self) -> asyncio.Task[None] | None:
        """What shutdown waits for: the hub sending the run's last frames."""
        return self.hub.task


class Hub:
    """One run's frames to its members on this worker (see the module docstring)."""

    def __init__(self, hubs: Hubs, run: Run | RemoteRun, position: int) -> None:
        self.hubs = hubs
        self.run = run
        self.position = position  # the seq of the last frame handed to the members
        self.members: dict[Session, Member] = {}
        self.task: asyncio.Task[None] | None = None

    async def pump(self) -> None:
        streams = self.hubs.streams
        run = self.run
        pace = streams.fanout_pace()
        try:
            with streams.stream():
                async for batch in run.follow(self.position, max_batch=streams.max_batch):
                    cost = await self.deliver(batch)
                    if not self.members:
                        return
                    if not run.finished:
                        await pace.wait(cost)
        except StreamError as exc:
            message = {"type": "error", "code": exc.code, "message": str(exc), "run_id": run.run_id}
            for member in list(self.members.values()):
                await member.session.send(message)
        except Exception:
            logger.exception("the fan-out of run %s failed", run.run_id)
        finally:
            self.hubs.by_run.pop(run.run_id, None)
            for session, member in list(self.members.items()):
                followers = session.connection.followers
                if followers.get(run.run_id) is member:
                    del followers[run.run_id]
            self.members.clear()

    async def deliver(self, batch: list[LogEntry]) -> float:
        """Send the batch to every member; the seconds of the loop that took. It yields
        to the loop every ``Streams.fanout_slice`` members, so that the run it delivers
        (on this worker) is not held up for a whole delivery."""
        first, last = batch[0].seq, batch[-1].seq
        delivery = self.hubs.streams.delivery()
        # First: a socket that joins while a send below waits must be level with the
        # end of this batch, which only the members already here receive.
        self.position = last
        text: str | None = None
        shared: SharedFrames | None = None
        sent = 0
        for session, member in list(self.members.items()):
            if member.after >= last:
                continue
            if await delivery.step() and member.done():  # it left meanwhile
                continue
            connection = session.connection
            if member.after < first:  # level with the hub: the batch's one message
                text = text or frames_message([entry.data for entry in batch])
                message, count = text, len(batch)
                if connection.send_shared is not None:
                    shared = shared or SharedFrames([text.encode()])
                    if share(connection.send_shared, shared):
                        member.after = last
                        sent += count
                        continue
            else:  # ahead of the hub: only what it has not received
                rest = [entry.data for entry in batch if entry.seq > member.after]
                message, count = frames_message(rest), len(rest)
            try:
                delivered = await try_send(connection.send_text, message)
            except Exception:  # the socket is going: its transport ends the session
                member.cancel()
                continue
            if delivered:
                member.after = last
                sent += count
            else:
                self.demote(member)
        self.hubs.streams.frames_sent += sent
        return delivery.busy

    def demote(self, member: Member) -> None:
        """A member that could not take a message follows the run on its own."""
        member.cancel()
        session = member.session
        session.connection.followers.pop(self.run.run_id, None)
        session.follow_alone(self.run, member.after)


class Hubs:
    """This worker's hubs, by run id (one per app, owned by the connection manager)."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.by_run: dict[str, Hub] = {}

    def join(
        self, run: Run | RemoteRun, session: Session, after: int, *, create: bool = True
    ) -> Member | None:
        """The session's membership of the run's hub (created if need be, unless
        ``create`` is false), or None if the session is behind the hub and must catch up
        on its own first (no await between this check and the join: no frame is lost)."""
        hub = self.by_run.get(run.run_id)
        if hub is None:
            if not create:
                return None
            hub = self.by_run[run.run_id] = Hub(self, run, after)
            hub.task = asyncio.create_task(hub.pump(), name=f"fanout-{run.run_id}")
        elif after < hub.position or (after > hub.position and isinstance(run, RemoteRun)):
            # Behind: it catches up on its own first. Ahead of another worker's run: it
            # may hold frames its dead worker sent beyond the shared log, and then needs
            # the run's final frame numbered after its own position (RemoteRun.follow).
            return None
        member = hub.members[session] = Member(hub, session, after)
        session.connection.followers[run.run_id] = member
        return member
