"""bench/fanout.py's end-of-run check on compressed streams, fed what our server sends."""

from __future__ import annotations

import random

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from agent_server.ws_protocol import BurstDeflateFactory, SharedFrames
from bench.fanout import CompressedEnds, ends_native

DONE = b'[{"type":"token","seq":9,"content":"x"},{"type":"done","seq":10}]'


def server_bytes() -> bytes:
    """A handshake's response, then messages in every way our server frames them."""
    client = ClientProtocol(
        parse_uri("ws://127.0.0.1/ws"), extensions=[ClientPerMessageDeflateFactory()]
    )
    server = ServerProtocol(extensions=[BurstDeflateFactory()])
    client.send_request(client.connect())
    server.receive_data(client.data_to_send()[0])
    server.send_response(server.accept(server.events_received()[0]))
    out = [b"".join(server.data_to_send())]

    def sent() -> None:
        out.append(b"".join(server.data_to_send()))

    tokens = b'{"type":"token","seq":%d,"content":"word word word"}'
    for seq in range(1, 4):  # the socket's own compressor, keeping its context
        server.send_text(tokens % seq)
        sent()
    server.send_ping(b"")  # a control frame between messages
    sent()
    shared = SharedFrames([b"[" + b",".join(tokens % s for s in range(4, 8)) + b"]"])
    out.append(shared.compressed(12))  # a fan-out's batch, compressed afresh, and the
    server.extensions[0].reset()  # socket's compressor forgets (WebSocketProtocol.send_shared)
    server.send_text(tokens % 8, fin=False)  # a fragmented message
    server.send_continuation(b"", fin=True)
    sent()
    server.send_text(DONE)
    sent()
    return b"".join(out)


def test_the_end_is_found_in_the_last_message_only_however_the_bytes_are_split() -> None:
    data = server_bytes()
    for seed in range(50):
        pieces, rng, start = [], random.Random(seed), 0
        while start < len(data):
            end = start + rng.randint(1, 40)
            pieces.append(data[start:end])
            start = end
        ends = CompressedEnds(ends_native)
        found = [ends.feed(memoryview(piece)) for piece in pieces]
        assert found[-1] and not any(found[:-1])


def test_a_stream_without_the_end_never_ends() -> None:
    ends = CompressedEnds(ends_native)
    assert not ends.feed(server_bytes()[: -len(DONE) // 2])
