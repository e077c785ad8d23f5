"""The checkers catch what a client must never see, and say where."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.checks import (
    Incomplete,
    assert_complete,
    assert_complete_or_clear_error,
    assert_in_order,
    ranges,
)
from tests.faults.clients import Attempt, Recording


def frames(*seqs: int, last: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    made = [{"type": "token", "run_id": "r", "seq": seq} for seq in seqs]
    if last is not None:
        made.append({"run_id": "r", **last})
    return made


def sse(items: list[dict[str, Any]], done: bool) -> Recording:
    recording = Recording("client", "sse", "r", frames=items)
    recording.attempts.append(Attempt("http://a", 0, 0.0, len(items), done=done))
    return recording


def test_the_gap_seen_once_before_worker_lost_is_caught_with_its_seqs() -> None:
    # frames up to seq 132, then worker_lost numbered 168 (issue 14, point 5)
    lost = frames(*range(1, 133), last={"type": "error", "code": "worker_lost", "seq": 168})
    with pytest.raises(Incomplete) as caught:
        assert_complete(lost, ends={"worker_lost"})
    message = str(caught.value)
    assert "gap: seq 168 after 132 (missing 133-167)" in message
    assert "130, 131, 132, [168]" in message and "all: 1-132, 168" in message


def test_duplicates_late_start_and_missing_final_frames_are_caught() -> None:
    done = {"type": "done", "seq": 4}
    with pytest.raises(Incomplete, match=r"duplicate or out of order: seq 2 after 2"):
        assert_complete(frames(1, 2, 2, last={"type": "done", "seq": 3}))
    with pytest.raises(Incomplete, match="starts at seq 2, not 1"):
        assert_complete(frames(2, 3, last=done))
    with pytest.raises(Incomplete, match="no final frame: the last is token"):
        assert_complete(frames(1, 2, 3))
    with pytest.raises(Incomplete, match="ended with worker_lost"):
        assert_complete(
            frames(1, last={"type": "error", "code": "worker_lost", "seq": 2}), ends={"done"}
        )
    with pytest.raises(Incomplete, match=r"no \[DONE\] after the final frame"):
        assert_complete(sse(frames(1, 2, 3, last=done), done=False))
    assert assert_complete(sse(frames(1, 2, 3, last=done), done=True)) == frames(4, last=done)[-1]
    assert_in_order(frames(1, 2, 3))
    with pytest.raises(Incomplete, match="gap"):
        assert_in_order(frames(1, 3))


def test_a_clear_error_then_done_is_accepted_in_place_of_the_rest() -> None:
    unavailable = {"type": "error", "code": "broker_unavailable", "message": "Redis is down"}
    final = assert_complete_or_clear_error(
        sse(frames(1, 2, last=unavailable), done=True), {"broker_unavailable"}
    )
    assert final["code"] == "broker_unavailable"
    with pytest.raises(Incomplete, match=r"no \[DONE\] after the error frame"):
        assert_complete_or_clear_error(
            sse(frames(1, 2, last=unavailable), done=False), {"broker_unavailable"}
        )
    with pytest.raises(Incomplete, match="gap"):
        assert_complete_or_clear_error(
            sse(frames(1, 3, last=unavailable), done=True), {"broker_unavailable"}
        )
    with pytest.raises(Incomplete, match=r"nor does it end with an error frame"):
        assert_complete_or_clear_error(sse(frames(1, 2), done=True), {"broker_unavailable"})


def test_ranges() -> None:
    assert ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert ranges([]) == ""
