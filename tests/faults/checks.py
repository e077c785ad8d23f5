"""What every client of a run must have seen, whatever fault was injected.

``assert_complete``: seqs exactly 1..N (no gap, no duplicate, from the first frame) and
one terminal frame (``done`` or ``error``), last; on SSE, ``data: [DONE]`` after it.
``assert_complete_or_clear_error``: that, or frames 1..k in order then a final ``error``
frame with one of the given codes, then ``[DONE]`` (the client knows to resume).
``assert_in_order``: seqs 1..k, no gap, no duplicate, ended or not (a cut connection).

Failures name the client, its connections, and the seqs around the problem.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tests.faults.clients import TERMINAL, Frame, Recording


class Incomplete(AssertionError):
    pass


def _around(seqs: Sequence[int], index: int, width: int = 6) -> str:
    start = max(0, index - width)
    shown = [f"[{s}]" if i == index else str(s) for i, s in enumerate(seqs) if i >= start]
    head = "... " if start else ""
    tail = " ..." if len(shown) > 2 * width + 1 else ""
    return head + ", ".join(shown[: 2 * width + 1]) + tail


def ranges(seqs: Sequence[int]) -> str:
    """``1-131, 168``: a compact view of a list of seqs."""
    parts: list[str] = []
    start = prev = None
    for seq in seqs:
        if prev is not None and seq == prev + 1:
            prev = seq
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = seq
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(parts)


def _unpack(subject: Recording | Sequence[Frame]) -> tuple[list[Frame], Recording | None, str]:
    if isinstance(subject, Recording):
        return subject.frames, subject, subject.describe()
    return list(subject), None, "frames"


def _fail(what: str, message: str) -> None:
    raise Incomplete(f"{what.splitlines()[0]}: {message}\n{what}")


def _check_order(frames: list[Frame], what: str) -> None:
    """Seqs 1, 2, 3... in arrival order, one run."""
    if not frames:
        _fail(what, "no frame received")
    missing = [i for i, f in enumerate(frames) if not isinstance(f.get("seq"), int)]
    if missing:
        _fail(what, f"frame without a seq at index {missing[0]}: {frames[missing[0]]}")
    seqs = [f["seq"] for f in frames]
    for index, seq in enumerate(seqs):
        expected = index + 1
        if seq == expected:
            continue
        if index == 0:
            problem = f"starts at seq {seq}, not 1"
        elif seq <= seqs[index - 1]:
            problem = f"duplicate or out of order: seq {seq} after {seqs[index - 1]}"
        else:
            missing = ranges(list(range(expected, seq)))
            problem = f"gap: seq {seq} after {seqs[index - 1]} (missing {missing})"
        _fail(what, f"{problem}; seqs {_around(seqs, index)}; all: {ranges(seqs)}")
    runs = {f.get("run_id") for f in frames}
    if len(runs) != 1:
        _fail(what, f"frames of several runs: {sorted(map(str, runs))}")


def assert_in_order(subject: Recording | Sequence[Frame]) -> None:
    """Seqs 1..k with no gap or duplicate (and one run), whether or not the run ended:
    what a client whose connection was cut must have seen."""
    frames, _, what = _unpack(subject)
    _check_order(frames, what)


def _outcome(frame: Frame) -> str:
    return "done" if frame["type"] == "done" else str(frame.get("code"))


def assert_complete(
    subject: Recording | Sequence[Frame], *, ends: Collection[str] | None = None
) -> Frame:
    """Seqs exactly 1..N, ending with the only terminal frame, whose outcome (``done`` or
    the error's code) is in ``ends`` if given; an SSE recording ends with ``[DONE]``.
    Returns the final frame."""
    frames, recording, what = _unpack(subject)
    _check_order(frames, what)
    terminal = [i for i, f in enumerate(frames) if f["type"] in TERMINAL]
    seqs = [f["seq"] for f in frames]
    if not terminal or terminal[-1] != len(frames) - 1:
        _fail(what, f"no final frame: the last is {frames[-1]['type']} (seq {seqs[-1]})")
    if len(terminal) > 1:
        _fail(what, f"frames after a terminal one: seqs {_around(seqs, terminal[0])}")
    final = frames[-1]
    if ends is not None and _outcome(final) not in ends:
        _fail(what, f"ended with {_outcome(final)} (seq {final['seq']}), expected one of {ends}")
    if recording is not None and recording.transport == "sse" and not recording.done:
        _fail(what, f"no [DONE] after the final frame (seq {final['seq']})")
    return final


def assert_complete_or_clear_error(
    subject: Recording | Sequence[Frame],
    codes: Collection[str],
    *,
    ends: Collection[str] | None = None,
) -> Frame:
    """Complete (see :func:`assert_complete`), or frames 1..k in order, then a final
    ``error`` frame whose code is in ``codes`` and (SSE) ``[DONE]``. Returns the final
    frame."""
    frames, recording, what = _unpack(subject)
    try:
        return assert_complete(subject, ends=ends)
    except Incomplete as complete:
        if not frames or frames[-1].get("type") != "error" or frames[-1].get("code") not in codes:
            raise Incomplete(
                f"{complete}\n...nor does it end with an error frame of code {sorted(codes)}"
            ) from None
        if len(frames) > 1:
            _check_order(frames[:-1], what)
        final = frames[-1]
        before = frames[-2]["seq"] if len(frames) > 1 else 0
        if isinstance(final.get("seq"), int) and final["seq"] <= before:
            _fail(what, f"the error frame's seq {final['seq']} repeats one already seen")
        if recording is not None and recording.transport == "sse" and not recording.done:
            _fail(what, f"no [DONE] after the error frame {final.get('code')}")
        return final
