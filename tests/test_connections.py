"""The connection manager on its own: sending, broadcasting, rooms, cleanup."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent_server.auth import User
from agent_server.connections import Connection, ConnectionManager, frames_message


class Inbox:
    """A socket's received messages (one that takes each at once); an array (several
    messages at once) counts once."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def send_text(self, text: str) -> None:
        self.messages.append(json.loads(text))

    @property
    def events(self) -> list[dict[str, Any]]:
        """The messages with arrays unpacked."""
        return [e for m in self.messages for e in (m if isinstance(m, list) else [m])]


def client(manager: ConnectionManager, name: str) -> tuple[Connection, Inbox]:
    inbox = Inbox()
    connection = Connection(send_text=inbox.send_text, user=User(name))
    manager.add(connection)
    return connection, inbox


async def test_tell_frames_once_and_sends_each_socket_its_own_copy() -> None:
    manager = ConnectionManager()
    (a, inbox_a), (b, inbox_b) = client(manager, "a"), client(manager, "b")
    await manager.tell([a, b], '{"type":"news"}', own={b.client_id: '{"type":"yours"}'})
    assert inbox_a.messages == [{"type": "news"}]
    assert inbox_b.messages == [{"type": "yours"}]


async def test_rooms_presence_and_cleanup() -> None:
    manager = ConnectionManager()
    (a, inbox_a), (b, inbox_b) = client(manager, "alice"), client(manager, "bob")
    await manager.join(a, "t")
    await manager.join(b, "t")
    assert (
        inbox_a.messages[-1]["members"]
        == [
            {"client_id": a.client_id, "user": "alice"},
            {"client_id": b.client_id, "user": "bob"},
        ]
        or len(inbox_a.messages[-1]["members"]) == 2
    )
    assert {c.client_id for c in manager.watching("t")} == {a.client_id, b.client_id}
    a.spawn(asyncio.sleep(60), "idle")
    idle = list(a.tasks)
    await manager.remove(a)  # however the socket ended
    assert inbox_b.messages[-1]["event"] == "leave"
    assert idle and all(task.cancelled() for task in idle)
    await manager.remove(b)
    assert manager.clients == {} and manager.rooms == {} and manager.watchers == {}


async def test_a_dead_peer_does_not_break_a_delivery() -> None:
    manager = ConnectionManager()

    async def broken(text: str) -> None:
        raise ConnectionError("gone")

    dead = Connection(send_text=broken)
    manager.add(dead)
    alive, inbox = client(manager, "ok")
    await manager.tell([dead, alive], '{"type":"news"}')
    assert inbox.messages == [{"type": "news"}]


def test_frames_message_shapes() -> None:
    assert frames_message([b'{"a":1}']) == '{"a":1}'
    assert json.loads(frames_message([b'{"a":1}', b'{"b":2}'])) == [{"a": 1}, {"b": 2}]
