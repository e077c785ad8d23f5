"""A run's log: live, then compact (bytes only, compressed) once the run has finished."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agent_server.frames import (
    Done,
    Encoded,
    LazyToken,
    Part,
    RunStart,
    Token,
    encode,
    encode_token,
)
from agent_server.runs.log import CHUNK, Log, LogEntry


def filled(count: int) -> tuple[Log, list[LogEntry]]:
    log = Log()
    entries = [LogEntry.of(RunStart(run_id="r", seq=1, ts=1, graph="g"))]
    for seq in range(2, count):
        if seq % 7 == 0:
            frame = Part(run_id="r", seq=seq, ts=1, event="messages", data=b'[{"x":1},{}]')
        else:
            frame = Token(run_id="r", seq=seq, ts=seq, content=f" word{seq}", message_id="m1")
        entries.append(LogEntry.of(frame))
    entries.append(LogEntry.of(Done(run_id="r", seq=count, ts=9, duration_ms=1.0)))
    for entry in entries:
        log.append(entry)
    return log, entries


@pytest.mark.parametrize("count", [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_a_compact_log_reads_back_what_was_appended(count: int) -> None:
    log, entries = filled(max(count, 2))
    raw = log.nbytes
    log.compact()
    assert log.compacted and len(log) == len(entries)
    assert list(log) == entries  # seq, type and bytes, chunk after chunk
    assert log[:] == entries and log[-1] == entries[-1] and log[0] == entries[0]
    for start, stop in [(0, 1), (5, CHUNK + 3), (CHUNK - 1, CHUNK + 1), (len(entries) - 2, 10**6)]:
        assert log[start:stop] == entries[start:stop]
    assert log[3:3] == [] and log[10**6 :] == []
    with pytest.raises(IndexError):
        log[len(entries)]
    if count > CHUNK:
        assert log.nbytes < raw / 4  # token frames repeat themselves: they compress well


def test_entries_of_a_compact_log_parse_their_model_when_asked() -> None:
    log, entries = filled(20)
    log.compact()
    read = log[1]
    assert read.type == "token" and read.data == encode(entries[1].frame)
    assert read.frame == entries[1].frame  # parsed from the bytes
    assert log[6].type == "part"  # a LangGraph part keeps its SSE bytes


def test_a_compact_log_takes_nothing_more() -> None:
    log, _ = filled(5)
    log.compact()
    with pytest.raises(AssertionError):
        log.append(LogEntry.of(Done(run_id="r", seq=6, ts=1, duration_ms=1)))


def test_a_compact_log_keeps_the_parts_that_ride_on_tokens() -> None:
    """A LangGraph API run's tokens carry their parts, and are encoded lazily: compacted,
    each reads back as the same frame with the same part."""
    log = Log()
    entries: list[LogEntry] = []
    for seq in range(1, CHUNK + 10):
        token = (LazyToken if seq % 2 else encode_token)("r", seq, seq, f" w{seq}", "m", "n", [])
        if seq % 3:
            token.part = b'event: messages\ndata: [{"content":" w%d"},{}]\nid: %d\n\n' % (seq, seq)
        entries.append(token)
        log.append(token)
    log.compact()
    assert list(log) == entries
    assert [e.part for e in log] == [e.part for e in entries]
    assert all(e.data == encode_token("r", e.seq, e.seq, f" w{e.seq}", "m", "n", []).data
               for e in log)  # fmt: skip


def test_a_compact_log_keeps_an_unread_lazy_token_unencoded() -> None:
    """A lazy token nobody read is packed as its fields and part, not its frame: read back
    it is lazy still, and its frame, when asked for, is the one it would have had."""
    log = Log()
    read = LazyToken("r", 1, 11, " a", "m", "n", ["sub:1"])
    read.part = b"event: messages\ndata: [{}]\nid: 1\n\n"
    assert read.data  # a native watcher read this one during the run
    unread = LazyToken("r", 2, 12, " b", None, None, [])
    unread.part = b"event: messages\ndata: [{}]\nid: 2\n\n"
    bare = LazyToken("r", 3, 13, " c", "m", "n", [])  # no messages part asked for
    for entry in (read, unread, bare):
        log.append(entry)
    log.compact()
    back = list(log)
    assert [type(e) for e in back] == [Encoded, LazyToken, LazyToken]
    assert [e.fields for e in back[1:]] == [
        ("r", 12, " b", None, None, []),
        ("r", 13, " c", "m", "n", []),
    ]
    assert [e.part for e in back] == [read.part, unread.part, None]
    assert [e.data for e in back] == [
        encode_token("r", 1, 11, " a", "m", "n", ["sub:1"]).data,
        encode_token("r", 2, 12, " b", None, None, []).data,
        encode_token("r", 3, 13, " c", "m", "n", []).data,
    ]


def test_a_lazy_token_json_cannot_hold_is_encoded_when_packed() -> None:
    """A field orjson refuses as it is (an odd node name) takes the frame's general
    encoding, as it would have live."""
    log = Log()
    odd = LazyToken("r", 1, 1, " a", "m", Decimal("1.5"), [])  # type: ignore[arg-type]
    log.append(odd)
    expected = encode_token("r", 1, 1, " a", "m", Decimal("1.5"), []).data  # type: ignore[arg-type]
    log.compact()
    assert [e.data for e in log] == [expected]
