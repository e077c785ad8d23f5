"""The WebSocket protocol's compression: a socket holds zlib state only while it streams,
and a client that keeps its context (as browsers do) decodes every message."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode

from agent_server import ws_protocol
from agent_server.app import create_app
from agent_server.settings import Settings
from agent_server.ws_protocol import BurstDeflate, BurstDeflateFactory
from tests.live import live_server


def negotiate() -> tuple[BurstDeflate, object]:
    """A server extension and the client's, as a browser's offer negotiates them."""
    client_factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    offer = client_factory.get_request_params()
    response, server = BurstDeflateFactory().process_request_params(offer, [])
    client = client_factory.process_response_params(response, [])
    assert ("client_no_context_takeover", None) in response
    assert isinstance(server, BurstDeflate)
    return server, client


def test_a_busy_socket_keeps_its_context_an_idle_one_drops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, client = negotiate()
    assert not hasattr(server, "encoder")  # nothing held before the first message
    clock = [100.0]
    monkeypatch.setattr(ws_protocol.time, "monotonic", lambda: clock[0])
    sizes = []
    messages = [json.dumps({"type": "token", "seq": n, "text": " word"}) for n in range(40)]
    for n, text in enumerate(messages):
        # bursts of ten messages 2 ms apart, then 20 s of silence (a ping's interval)
        clock[0] += 20.0 if n % 10 == 0 else 0.002
        frame = server.encode(Frame(Opcode.TEXT, text.encode()))
        sizes.append(len(frame.data))
        decoded = client.decode(frame)  # type: ignore[attr-defined]
        assert decoded.data.decode() == text  # the client's context never goes wrong
        assert hasattr(server, "encoder") == (n % 10 != 0)  # a lone message: dropped
    # the context pays within a burst: later messages shrink to a few bytes
    assert max(sizes[2:10]) < sizes[0] / 2


def test_the_client_resets_its_context_so_the_decoder_is_dropped() -> None:
    server, client = negotiate()
    for n in range(3):
        text = json.dumps({"type": "ping", "id": n})
        frame = client.encode(Frame(Opcode.TEXT, text.encode()))  # type: ignore[attr-defined]
        assert server.decode(frame).data.decode() == text
        assert not hasattr(server, "decoder")


def test_a_live_socket_negotiates_it_and_streams_a_run() -> None:
    app = create_app(Settings(graphs={"agent": "graphs/agent.py:make_graph"}))

    async def scenario(url: str) -> None:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            extensions = ws.protocol.extensions
            assert [type(e).__name__ for e in extensions] == ["PerMessageDeflate"]
            await ws.send(json.dumps({"type": "run", "graph": "agent", "message": "What is 2+2?"}))
            tokens = []
            while True:
                data = json.loads(await asyncio.wait_for(ws.recv(), 30))
                for frame in data if isinstance(data, list) else [data]:
                    tokens += [frame["content"]] if frame["type"] == "token" else []
                    if frame["type"] in ("done", "error") and "seq" in frame:
                        assert frame["type"] == "done" and "4" in "".join(tokens)
                        return

    with live_server(app) as url:
        asyncio.run(scenario(url))


def test_a_fan_out_frames_once_and_every_client_decodes_it() -> None:
    """A run watched by a compressing and a plain socket: both get the hub's one framing
    (agent_server/fanout.py), and the compressing socket's own next message, made after
    shared ones entered its client's window, still decodes."""
    app = create_app(Settings(graphs={"agent": "graphs/agent.py:make_graph"}))

    async def watch(ws: websockets.ClientConnection) -> list[tuple[int, str, str]]:
        frames = []
        while True:
            data = json.loads(await asyncio.wait_for(ws.recv(), 30))
            for frame in data if isinstance(data, list) else [data]:
                if "seq" in frame:
                    frames.append((frame["seq"], frame["type"], frame.get("content", "")))
                    if frame["type"] in ("done", "error"):
                        return frames

    async def scenario(url: str) -> None:
        ws_url = url.replace("http", "ws") + "/ws"
        async with (
            websockets.connect(ws_url, compression="deflate") as deflating,
            websockets.connect(ws_url, compression=None) as plain,
            websockets.connect(ws_url) as starter,
        ):
            for ws in (deflating, plain):
                await ws.send(json.dumps({"type": "subscribe", "thread_id": "shared-t"}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
            for n in range(2):  # the second run: shared frames after the socket's own
                await starter.send(
                    json.dumps(
                        {"type": "run", "graph": "agent", "message": "hi", "thread_id": "shared-t"}
                    )
                )
                seen = await asyncio.gather(watch(deflating), watch(plain))
                assert seen[0] == seen[1] and seen[0][-1][1] == "done"
                await deflating.send(json.dumps({"type": "ping", "id": n}))
                pong = json.loads(await deflating.recv())
                assert (pong["type"], pong["id"]) == ("pong", n)

    with live_server(app) as url:
        asyncio.run(scenario(url))
