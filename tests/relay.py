"""A TCP relay in front of a real server, for tests of what a dropped network does."""

from __future__ import annotations

import asyncio

import httpx


class Relay:
    """Relays connections to ``target``. :meth:`cut` drops every connection through it
    (a dropped network, not a closed stream); while :meth:`refuse` holds, a new
    connection is dropped as soon as it is made (the server unreachable), until
    :meth:`accept`; :meth:`stall` silences the connections open, :meth:`retarget` sends
    new connections elsewhere."""

    def __init__(self, target: str) -> None:
        self.target = httpx.URL(target)
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.refusing = False
        self.flowing: list[asyncio.Event] = []  # one per connection

    async def start(self) -> str:
        """The target's URL with the relay's address in it."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return str(self.target.copy_with(host="127.0.0.1", port=port))

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()

    def refuse(self) -> None:
        self.refusing = True
        self.cut()

    def accept(self) -> None:
        self.refusing = False

    def stall(self) -> None:
        """The connections open now stay open and carry nothing more, either way (a NAT or
        load balancer that forgot them); new connections are relayed as before."""
        for flowing in self.flowing:
            flowing.clear()

    def retarget(self, target: str) -> None:
        """New connections go to ``target``; those open stay where they were (a DNS name
        moved to another server, as a managed Redis's endpoint does on failover)."""
        self.target = httpx.URL(target)

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        target = self.target
        up_reader, up_writer = await asyncio.open_connection(target.host, target.port)
        self.writers |= {writer, up_writer}
        flowing = asyncio.Event()
        flowing.set()
        self.flowing.append(flowing)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    await flowing.wait()
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()
                self.writers.discard(sink)

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )
