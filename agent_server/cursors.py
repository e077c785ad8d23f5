"""Positions in a log and ids, as clients send them back, parsed by one strict parser.

Every route and adapter that takes a seq (``Last-Event-ID``, ``?after=``, ``<run>:<seq>``
ids, LangGraph's ``<ms>-<seq>`` thread ids) or names a thread, run, checkpoint or
assistant reads it here, and turns :class:`BadCursor` into its own error shape (400 or
422 JSON natively, LangGraph's ``detail`` on its API, an ``error`` message on ``/ws``).

Decisions:

- Only ASCII digits: ``str.isdigit`` also accepts ``"²"`` or Arabic-Indic digits, which
  ``int`` refuses (a 500 once).
- At most :data:`MAX_DIGITS` digits: Python refuses to convert a string of more than
  4,300 digits (another 500), and no log holds 10**18 frames, so a longer number is
  refused as bad input rather than compared.
- An id is 1 to :data:`MAX_ID_LENGTH` characters, none of them a control character:
  PostgreSQL refuses NUL in text (a thread id ``a%00b`` was a 500), and no id the server
  or a client library makes is longer (UUIDs; ``THREAD_ID_PATTERN`` allows 128). Any
  other character is allowed: LangGraph's clients may name threads as they like.
"""

from __future__ import annotations

import re

MAX_DIGITS = 18
MAX_SEQ = 10**MAX_DIGITS - 1
MAX_ID_LENGTH = 128
_SEQ = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
ID_PATTERN = rf"^[^\x00-\x1f\x7f]{{1,{MAX_ID_LENGTH}}}$"  # also in the OpenAPI document
_ID = re.compile(ID_PATTERN)


class BadCursor(ValueError):
    """A seq or id a client sent that is not one; the message says what was expected."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_seq(text: str, what: str = "seq") -> int:
    """A non-negative frame seq: 1 to 18 ASCII digits."""
    if _SEQ.fullmatch(text) is None:
        raise BadCursor(
            f"{what} must be a frame seq (1 to {MAX_DIGITS} digits), not {_shown(text)}"
        )
    return int(text)


def parse_id(text: str, what: str = "id") -> str:
    """A thread, run, checkpoint or assistant id: 1 to 128 characters, no control ones."""
    if _ID.fullmatch(text) is None:  # not match: "$" also matches before a final "\n"
        raise BadCursor(
            f"{what} must be 1 to {MAX_ID_LENGTH} characters without control characters, "
            f"not {_shown(text)}"
        )
    return text


def parse_run_cursor(text: str, what: str = "Last-Event-ID") -> tuple[str | None, int]:
    """``<seq>`` or ``<run_id>:<seq>`` (the ids of ``GET /runs/stream``)."""
    run_id, sep, seq = text.rpartition(":")
    return (run_id if sep else None), parse_seq(seq, what)


def parse_thread_cursor(text: str, what: str = "Last-Event-ID") -> tuple[int, int]:
    """``<ms>-<seq>`` (LangGraph's thread stream ids; ``<ms>-`` and ``<ms>-*`` mean from
    the start of that run)."""
    ms, _, seq = text.partition("-")
    return parse_seq(ms, what), 0 if seq in ("", "*") else parse_seq(seq, what)
