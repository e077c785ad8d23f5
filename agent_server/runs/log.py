"""A run's log as subscribers read it: its entries, and following a live log from a
seq (see the package docstring for the decisions).

Compact logs. While a run is live its log holds each frame twice over: the model (what
the run's own code and in-process consumers read) and its encoded bytes (what every
transport sends). A finished log only serves late joiners and resumes, which need the
bytes, seekable by seq: :meth:`Log.compact` drops the models and packs the bytes into
zstd-compressed chunks of :data:`CHUNK` frames, with their lengths and types beside. A
finished 3,000-token run then keeps about 0.1 MiB instead of 6 (token frames repeat
their run id, message id and node: they compress about forty to one). Reading a
compact log decompresses the chunks a batch spans (about 40 µs a chunk); an entry read
from it parses its model again only if a consumer asks for ``frame``.

zstd (level 1) rather than zlib: on a LangGraph API run's log (2.5 MB: every token's
part repeats its model call's metadata) it packs in 1.5 ms instead of 6.2, to 33 KB
instead of 70, and reads back twice as fast (docs/performance.md).

A LangGraph API run's tokens are packed as their fields and parts, their native frames
left unencoded (see :class:`_Chunk`): encoding 3,000 frames nobody may ever read cost
5 ms of the GIL per run, while other runs stream.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, overload

import orjson
import zstandard

from agent_server.frames import TERMINAL_TYPES, Encoded, LazyToken

logger = logging.getLogger("agent_server.runs")

CHUNK = 256  # frames per compressed chunk of a compact log
# Frame types by one-byte code, in a compact log (a Part is "part").
TYPES = (
    "run_start", "token", "tool_start", "tool_end", "tool_error", "custom", "interrupt",
    "error", "done", "part",
)  # fmt: skip
CODES = {name: code for code, name in enumerate(TYPES)}
LAZY = len(TYPES)  # a token kept as its fields, its frame not encoded (see _Chunk)


class SubscriberTooSlow(Exception):
    """The subscriber fell too far behind the run; it should reconnect and resume."""


# A frame of a log (live: with its model; compact or from the broker: bytes only).
LogEntry = Encoded

# A frame read back from the broker: the same shape (no model until asked for).
RemoteEntry = LogEntry


class _Chunk:
    """:data:`CHUNK` entries' bytes, compressed together, with their lengths and types.

    A token of a LangGraph API run whose frame nobody has read (:class:`LazyToken`) is
    kept as its part, and its fields go into one JSON array after the entries': its
    frame is encoded only if a native reader ever asks for it, not for every token when
    the run ends (docs/performance.md)."""

    __slots__ = ("data", "lengths", "types")

    def __init__(self, entries: Sequence[LogEntry], compressor: zstandard.ZstdCompressor) -> None:
        wires: list[bytes] = []
        types = bytearray()
        lazy: list[tuple[Any, ...]] = []
        for e in entries:
            fields = e.fields if type(e) is LazyToken else None
            if fields is None:
                wires.append(e.wire)
                types.append(CODES[e.type])
            else:
                lazy.append(fields)
                wires.append(e.part or b"")
                types.append(LAZY)
        tail = b""
        if lazy:
            try:
                tail = orjson.dumps(lazy)
            except TypeError:  # a field JSON cannot hold as it is: encode those frames
                wires = [e.wire for e in entries]
                types = bytearray(CODES[e.type] for e in entries)
        self.lengths = array("I", map(len, wires))
        self.types = bytes(types)
        # An exact-size copy: zstd writes into a buffer of the input's bound and shrinks
        # it in place, which strands the rest (measured: 9.7 MiB of RSS held by 1.3 MiB
        # of chunks, 1.7 MiB with the copy).
        wires.append(tail)
        self.data = bytes(memoryview(compressor.compress(b"".join(wires))))

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.lengths.itemsize * len(self.lengths) + len(self.types) + 200

    def entries(self, first_seq: int) -> list[LogEntry]:
        raw = zstandard.decompress(self.data)
        lazy: Iterator[list[Any]] = iter(())
        if LAZY in self.types:
            lazy = iter(orjson.loads(raw[sum(self.lengths) :]))
        found: list[LogEntry] = []
        offset = 0
        for index, length in enumerate(self.lengths):
            code = self.types[index]
            piece = raw[offset : offset + length]
            if code == LAZY:
                run_id, *fields = next(lazy)
                token = LazyToken(run_id, first_seq + index, *fields)
                token.part = piece or None
                found.append(token)
            else:
                found.append(LogEntry.unwire(first_seq + index, TYPES[code], piece))
            offset += length
        return found


class Log(Sequence[LogEntry]):
    """A run's frames by seq (seq ``n`` at index ``n - 1``): a list while the run is live,
    compressed chunks once it has finished and :meth:`compact` was called."""

    __slots__ = ("_chunks", "_count", "_entries", "_packed")

    def __init__(self) -> None:
        self._entries: list[LogEntry] | None = []
        self._chunks: list[_Chunk] = []
        self._count = 0
        self._packed = 0

    def append(self, entry: LogEntry) -> None:
        assert self._entries is not None, "a compact log is final"
        self._entries.append(entry)

    @property
    def nbytes(self) -> int:
        """The encoded frames' size: compressed once compact (what retention counts);
        counted on demand while live, which encodes a lazy token (frames.LazyToken)."""
        if self._entries is None:
            return self._packed
        return sum(len(e.wire) for e in self._entries)

    @property
    def compacted(self) -> bool:
        return self._entries is None

    def compact(self) -> None:
        """Keep the bytes only, compressed (the run has finished: nothing is appended)."""
        if self._entries is not None:
            self.install(self.pack())

    def pack(self) -> list[_Chunk]:
        """The compressed chunks of the log as it stands; it touches nothing, so it may run
        on another thread (zstd releases the GIL) while the log is read here."""
        entries = list(self._entries or ())
        compressor = zstandard.ZstdCompressor(level=1)  # one per call: not thread-safe
        return [_Chunk(entries[i : i + CHUNK], compressor) for i in range(0, len(entries), CHUNK)]

    def install(self, chunks: list[_Chunk]) -> None:
        """Swap the live entries for ``chunks`` (made by :meth:`pack` of this log)."""
        if self._entries is None:
            return
        self._count = len(self._entries)
        self._chunks = chunks
        self._entries = None
        self._packed = sum(chunk.nbytes for chunk in chunks)

    def __len__(self) -> int:
        return self._count if self._entries is None else len(self._entries)

    @overload
    def __getitem__(self, index: int) -> LogEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[LogEntry]: ...

    def __getitem__(self, index: int | slice) -> LogEntry | list[LogEntry]:
        if self._entries is not None:
            return self._entries[index]
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            found: list[LogEntry] = []
            for number in range(start // CHUNK, (stop - 1) // CHUNK + 1 if stop > start else 0):
                chunk = self._chunks[number].entries(number * CHUNK + 1)
                low = max(start - number * CHUNK, 0)
                found.extend(chunk[low : stop - number * CHUNK])
            return found
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("log index out of range")
        return self._chunks[index // CHUNK].entries(index // CHUNK * CHUNK + 1)[index % CHUNK]

    def __iter__(self) -> Iterator[LogEntry]:
        if self._entries is not None:
            yield from self._entries
            return
        for number, chunk in enumerate(self._chunks):
            yield from chunk.entries(number * CHUNK + 1)


async def follow_log(
    log: list[LogEntry] | Log,
    finished: Callable[[], bool],
    changed: asyncio.Event,
    after: int = 0,
    *,
    heartbeat: float | None = None,
    max_lag: int | None = None,
    max_batch: int = 512,
    skip_parts: bool = False,
    visible: Callable[[], int] | None = None,
) -> AsyncIterator[list[LogEntry]]:
    """Batches of ``log`` after seq ``after``, live, until the terminal frame or until
    ``finished()`` with nothing left; ``changed`` is set on every append. ``visible()``,
    when given, is how much of the log may be read yet (see :meth:`Run.follow`).

    With ``skip_parts``, LangGraph API parts (frames of type ``part``) are left out, for
    the native transports: a run started through that API then shows gaps in ``seq``.

    With ``heartbeat``, an empty batch is yielded after that many idle seconds, so a
    transport can keep the connection alive. With ``max_lag``, a subscriber that falls
    that many frames further behind a live log than where it joined gets
    :class:`SubscriberTooSlow`: its starting backlog is not lag, or a subscriber that
    resumes far back would be dropped before its first frame, again and again.
    """
    position = max(after, 0)  # seq n sits at index n - 1
    if max_lag is not None:
        max_lag += max(0, len(log) - position)
    while True:
        available = len(log) if visible is None else visible()
        if position < available:
            if max_lag is not None and not finished() and available - position > max_lag:
                raise SubscriberTooSlow(f"{available - position} frames behind")
            batch = log[position : min(available, position + max_batch)]
            position += len(batch)
            terminal = batch[-1].type in TERMINAL_TYPES
            if skip_parts:
                batch = [entry for entry in batch if entry.type != "part"]
            if batch:
                yield batch
            if terminal:
                return
        elif finished():
            return
        else:
            try:
                async with asyncio.timeout(heartbeat):
                    await changed.wait()
            except TimeoutError:
                yield []
