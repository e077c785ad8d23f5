"""Frames as readable terminal text (``agent-server run``)."""

from __future__ import annotations

from typing import TextIO

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
    dumps,
)


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsoleRenderer:
    """Writes tokens as flowing text and everything else as one line each."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.in_text = False
        self.message_id: str | None = None

    def _line(self, text: str) -> None:
        if self.in_text:
            self.out.write("\n")
            self.in_text = False
        self.out.write(text + "\n")

    def write(self, frame: BaseFrame) -> None:
        if isinstance(frame, Token):
            if self.in_text and frame.message_id != self.message_id:
                # Another message (e.g. the next node's model call): start a new line.
                self.out.write("\n")
                self.in_text = False
            self.message_id = frame.message_id
            text = frame.content if self.in_text else frame.content.lstrip()
            self.out.write(text)
            # Whitespace before a message's first word leaves the line empty, not started.
            self.in_text = self.in_text or bool(text)
        elif isinstance(frame, RunStart):
            self._line(f"[{frame.graph}] run {frame.run_id} on thread {frame.thread_id}")
        elif isinstance(frame, ToolStart):
            self._line(f"→ {frame.name}({_short(frame.input)})")
        elif isinstance(frame, ToolEnd):
            took = f" ({frame.duration_ms:.0f} ms)" if frame.duration_ms is not None else ""
            self._line(f"← {frame.name}: {_short(frame.output)}{took}")
        elif isinstance(frame, ToolError):
            self._line(f"✗ {frame.name} failed: {frame.error}")
        elif isinstance(frame, Custom):
            self._line(f"· {frame.name}: {_short(frame.data)}")
        elif isinstance(frame, Interrupt):
            self._line(f"? interrupt: {_short(frame.value)}")
        elif isinstance(frame, Error):
            self._line(f"error [{frame.code}]: {frame.message}")
        elif isinstance(frame, Done):
            usage = frame.usage
            self._line(
                f"done in {frame.duration_ms:.0f} ms "
                f"({usage.input_tokens} in / {usage.output_tokens} out tokens)"
            )
        self.out.flush()
