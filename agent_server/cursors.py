"""Positions in a log as clients send them back, parsed by one strict parser.

Every route and adapter that takes a seq (``Last-Event-ID``, ``?after=``, ``<run>:<seq>``
ids, LangGraph's ``<ms>-<seq>`` thread ids) reads it here, and turns :class:`BadCursor`
into its own error shape (400 JSON natively, LangGraph's ``detail`` on its API).

Decisions:

- Only ASCII digits: ``str.isdigit`` also accepts ``"²"`` or Arabic-Indic digits, which
  ``int`` refuses (a 500 once).
- At most :data:`MAX_DIGITS` digits: Python refuses to convert a string of more than
  4,300 digits (another 500), and no log holds 10**18 frames, so a longer number is
  refused as bad input rather than compared.
"""

from __future__ import annotations

import re

MAX_DIGITS = 18
_SEQ = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)


class BadCursor(ValueError):
    """A position a client sent that is not one; the message says what was expected."""


def parse_seq(text: str, what: str = "seq") -> int:
    """A non-negative frame seq: 1 to 18 ASCII digits."""
    if _SEQ.fullmatch(text) is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadCursor(f"{what} must be a frame seq (1 to {MAX_DIGITS} digits), not {shown!r}")
    return int(text)


def parse_run_cursor(text: str, what: str = "Last-Event-ID") -> tuple[str | None, int]:
    """``<seq>`` or ``<run_id>:<seq>`` (the ids of ``GET /runs/stream``)."""
    run_id, sep, seq = text.rpartition(":")
    return (run_id if sep else None), parse_seq(seq, what)


def parse_thread_cursor(text: str, what: str = "Last-Event-ID") -> tuple[int, int]:
    """``<ms>-<seq>`` (LangGraph's thread stream ids; ``<ms>-`` and ``<ms>-*`` mean from
    the start of that run)."""
    ms, _, seq = text.partition("-")
    return parse_seq(ms, what), 0 if seq in ("", "*") else parse_seq(seq, what)
