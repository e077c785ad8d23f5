"""agent_server/cursors.py: the one parser of seqs and ids."""

from __future__ import annotations

import pytest

from agent_server.cursors import (
    MAX_SEQ,
    BadCursor,
    parse_id,
    parse_run_cursor,
    parse_seq,
    parse_thread_cursor,
)

HUGE = "9" * 4301  # int() refuses it (a 500 once)
ODD_DIGITS = ["\u00b2", "\u0663", "\uff11", "\U0001d7d7", "1\u00b2"]  # isdigit() says yes


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1.0", "1e3", "9" * 19, HUGE, *ODD_DIGITS])
def test_a_seq_is_1_to_18_ascii_digits(text: str) -> None:
    with pytest.raises(BadCursor, match="frame seq"):
        parse_seq(text)


def test_seqs_parse() -> None:
    assert parse_seq("0") == 0 and parse_seq("42") == 42 and parse_seq("9" * 18) == MAX_SEQ
    assert parse_run_cursor("7") == (None, 7)
    assert parse_run_cursor("run:a:7") == ("run:a", 7)
    assert parse_thread_cursor("1700000000000-3") == (1700000000000, 3)
    assert parse_thread_cursor("5-") == (5, 0) and parse_thread_cursor("5-*") == (5, 0)
    for text in (f"r:{HUGE}", "r:\u00b2"):
        with pytest.raises(BadCursor):
            parse_run_cursor(text)
    for text in (f"{HUGE}-1", "1-\u0663", "1-2-3"):
        with pytest.raises(BadCursor):
            parse_thread_cursor(text)


@pytest.mark.parametrize(
    "text", ["", "a\x00b", "\x00", "a\nb", "a\n", "tab\there", "\x7f", "x" * 129]
)
def test_an_id_has_no_control_characters_and_at_most_128_of_them(text: str) -> None:
    with pytest.raises(BadCursor, match="control characters"):
        parse_id(text, "thread_id")


@pytest.mark.parametrize("text", ["t-1", "x" * 128, "a b", "\u00b2", "../../etc", "\U0001f600"])
def test_any_other_id_is_taken_as_it_is(text: str) -> None:
    assert parse_id(text) == text
