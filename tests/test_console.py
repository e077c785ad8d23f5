"""ConsoleRenderer: frames as terminal text (what `agent-server run` prints)."""

from __future__ import annotations

import io

from agent_server.console import ConsoleRenderer
from agent_server.frames import (
    BaseFrame,
    Custom,
    Done,
    Error,
    Interrupt,
    RunStart,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    Usage,
)
from agent_server.translate import FrameFactory


def render(*frames: BaseFrame) -> str:
    out = io.StringIO()
    renderer = ConsoleRenderer(out)
    for frame in frames:
        renderer.write(frame)
    return out.getvalue()


def test_a_tool_calling_run() -> None:
    make = FrameFactory("r1")
    text = render(
        make(RunStart, graph="agent", thread_id="t1"),
        make(Token, content="  Let", message_id="m1"),
        make(Token, content=" me", message_id="m1"),
        make(Token, content=" compute.", message_id="m1"),
        make(ToolStart, name="calculator", input={"expression": "2+2"}, tool_call_id="c1"),
        make(ToolEnd, name="calculator", output="4", tool_call_id="c1", duration_ms=12.4),
        make(Token, content=" The", message_id="m2"),
        make(Token, content=" answer is 4.", message_id="m2"),
        make(Done, usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15), duration_ms=35),
    )
    assert text == (
        "[agent] run r1 on thread t1\n"
        "Let me compute.\n"
        '→ calculator({"expression":"2+2"})\n'
        "← calculator: 4 (12 ms)\n"
        "The answer is 4.\n"
        "done in 35 ms (10 in / 5 out tokens)\n"
    )


def test_custom_interrupt_and_error_lines() -> None:
    make = FrameFactory("r2")
    text = render(
        make(Token, content="Working", message_id="m1"),
        make(Custom, name="progress", data={"step": 1, "of": 3}),
        make(Custom, name="status", data="half way"),
        make(ToolError, name="calculator", error="division by zero", tool_call_id="c1"),
        make(ToolEnd, name="lookup", output={"rows": [1, 2]}),
        make(Interrupt, value={"question": "deploy?"}, resumable=True),
        make(Error, code="run_error", message="the model backend went away"),
    )
    assert text == (
        "Working\n"
        '· progress: {"step":1,"of":3}\n'
        "· status: half way\n"
        "✗ calculator failed: division by zero\n"
        '← lookup: {"rows":[1,2]}\n'
        '? interrupt: {"question":"deploy?"}\n'
        "error [run_error]: the model backend went away\n"
    )


def test_each_message_gets_its_own_line() -> None:
    # Two model calls in a row (e.g. a "draft" node then a "review" node), no frame between.
    make = FrameFactory("r3")
    text = render(
        make(Token, content="Draft", message_id="m1"),
        make(Token, content=" text.", message_id="m1"),
        make(Token, content=" Reviewed", message_id="m2"),
        make(Token, content=" text.", message_id="m2"),
        make(Done, duration_ms=1),
    )
    assert text == "Draft text.\nReviewed text.\ndone in 1 ms (0 in / 0 out tokens)\n"


def test_leading_whitespace_only_tokens_print_nothing() -> None:
    make = FrameFactory("r4")
    text = render(
        make(Token, content="\n\n", message_id="m1"),
        make(ToolStart, name="clock", input={}),
        make(Token, content="\n", message_id="m2"),
        make(Token, content=" It is noon.", message_id="m2"),
    )
    assert text == "→ clock({})\nIt is noon."


def test_long_values_are_shortened() -> None:
    make = FrameFactory("r5")
    text = render(make(ToolEnd, name="reader", output="x" * 500))
    line = text.rstrip("\n")
    assert line.startswith("← reader: xxx") and line.endswith("…")
    assert len(line) == len("← reader: ") + 200


def test_every_write_is_flushed() -> None:
    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    out = Counting()
    renderer = ConsoleRenderer(out)
    make = FrameFactory("r6")
    renderer.write(make(Token, content="a"))
    renderer.write(make(Token, content="b"))
    assert out.flushes == 2 and out.getvalue() == "ab"
