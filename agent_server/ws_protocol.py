"""uvicorn's WebSocket protocol with a compression context only while a socket is busy.

Browsers offer permessage-deflate and uvicorn accepts it, which gives every socket a
zlib compressor and decompressor for its whole life: about 40 KB of the 70 KB an idle
``/ws`` socket cost, for sockets that send a ping every 20 s. Here a socket keeps them
only while it is streaming:

- The server's compressor is dropped after a message that comes more than
  :data:`BURST` seconds after the one before (an idle socket's ping, a lone reply) and
  made afresh for the next message. A fresh compressor refers to nothing the client saw
  before, so its output is valid for a client that keeps its context (RFC 7692 lets a
  sender reset its context whenever it likes); a token stream, whose messages are a
  few milliseconds apart, keeps its context and its compression ratio.
- The client is asked not to keep its context (``client_no_context_takeover``, which a
  server may always answer with): its messages are small commands, and the decompressor
  is then dropped after each one, as websockets does.

One message to many sockets (a run's fan-out, agent_server/fanout.py) is framed once:
:class:`SharedFrames` holds its wire bytes, plain and compressed with a fresh context
(valid for every client, as above), and :meth:`WebSocketProtocol.send_shared` writes
them to a socket that can take them now, found in the scope's extensions under
:data:`SEND_SHARED`. The socket's own compressor is then dropped: the client's window
now holds a message that compressor never saw.

Everything else is uvicorn's ``websockets-sansio`` protocol, the one ``ws="auto"`` picks.
"""

from __future__ import annotations

import logging
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter

BURST = 1.0  # seconds between two messages of a socket that keeps its compressor
SEND_SHARED = "agent_server.send_shared"  # the scope extension: WebSocketProtocol.send_shared
MEM_LEVEL = 5  # uvicorn's compression settings
WINDOW_BITS = 12

SendShared = Callable[["SharedFrames"], bool]


def text_frame(payload: bytes, *, compressed: bool) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2); RSV1 marks a compressed message."""
    first = 0x80 | (0x40 if compressed else 0) | Opcode.TEXT.value
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class SharedFrames:
    """Text messages framed once for many sockets (server frames are not masked)."""

    __slots__ = ("deflated", "messages", "plain")

    def __init__(self, messages: Sequence[bytes]) -> None:
        self.messages = messages
        self.plain = b"".join(text_frame(message, compressed=False) for message in messages)
        self.deflated: dict[int, bytes] = {}  # window bits -> the compressed frames

    def compressed(self, window_bits: int) -> bytes:
        """Each message compressed with a fresh context: valid for every client (see the
        module docstring)."""
        frames = self.deflated.get(window_bits)
        if frames is None:
            parts = []
            for message in self.messages:
                encoder = zlib.compressobj(wbits=-window_bits, memLevel=MEM_LEVEL)
                body = encoder.compress(message) + encoder.flush(zlib.Z_SYNC_FLUSH)
                parts.append(text_frame(body[:-4], compressed=True))  # less 00 00 ff ff
            frames = self.deflated[window_bits] = b"".join(parts)
        return frames


class BurstDeflate(PerMessageDeflate):
    """permessage-deflate whose compressor lives only while messages come close together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep = not self.local_no_context_takeover
        if self.keep:
            del self.encoder  # made when the first message is sent
        self.last_sent = 0.0

    def reset(self) -> None:
        """Forget the context: the next message is compressed afresh."""
        if self.keep and hasattr(self, "encoder"):
            del self.encoder

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode in CTRL_OPCODES or not self.keep:
            return super().encode(frame)
        if frame.opcode is not Opcode.CONT and not hasattr(self, "encoder"):
            self.encoder = zlib.compressobj(
                wbits=-self.local_max_window_bits, **self.compress_settings
            )
        encoded = super().encode(frame)
        if frame.fin:
            now = time.monotonic()
            if now - self.last_sent > BURST:
                del self.encoder
            self.last_sent = now
        return encoded


class BurstDeflateFactory(ServerPerMessageDeflateFactory):
    """uvicorn's settings (12-bit windows, memLevel 5), with :class:`BurstDeflate`."""

    def __init__(self) -> None:
        super().__init__(
            client_no_context_takeover=True,
            server_max_window_bits=WINDOW_BITS,
            client_max_window_bits=WINDOW_BITS,
            compress_settings={"memLevel": MEM_LEVEL},
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)
        return response, BurstDeflate(
            extension.remote_no_context_takeover,
            extension.local_no_context_takeover,
            extension.remote_max_window_bits,
            extension.local_max_window_bits,
            extension.compress_settings,
        )


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """Pass as uvicorn's ``ws``: its sans-I/O protocol with :class:`BurstDeflateFactory`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            self.conn = ServerProtocol(
                extensions=[BurstDeflateFactory()],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SEND_SHARED] = self.send_shared

    def send_shared(self, shared: SharedFrames) -> bool:
        """Write a fan-out's message if the socket can take it without waiting; False
        (nothing written) otherwise, and the caller sends it the usual way."""
        conn = self.conn
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
            or conn.state is not State.OPEN
            or conn.expect_continuation_frame
        ):
            return False
        if not conn.extensions:
            self.transport.write(shared.plain)
            return True
        deflate = conn.extensions[0]
        if len(conn.extensions) > 1 or not isinstance(deflate, BurstDeflate):
            return False
        deflate.reset()  # the client's window now holds a message it never saw
        self.transport.write(shared.compressed(deflate.local_max_window_bits))
        return True

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (their headers, a few KB) are not
            # read again: the scope has the headers the app needs.
            self.request = self.response = None  # type: ignore[assignment]
