"""Where a run's frames come from: the two sources that drive a graph.

``astream_events(version="v2")`` defines the frames (:mod:`agent_server.translate`); it
is also the most expensive way to learn what a graph does: LangChain builds an event
dict for every callback of every runnable, sends it through a memory stream, and a
second task reads it back (about 240 µs per streamed token here, docs/performance.md).
The default source learns the same facts for a fraction of that:

- ``callbacks`` (the default): the graph runs with ``astream(stream_mode=...,
  subgraphs=True)`` for what only stream modes tell (``values``, ``updates``, stream
  writer output, and the LangGraph API's pass-through modes), and with one inline
  callback handler, :class:`FrameCallbacks`, for what callbacks tell (tokens, tool
  starts and ends, custom events, usage, and for the LangGraph API's messages modes the
  model and node boundaries). Each fact goes to the very method of
  :class:`~agent_server.translate.EventTranslator` (and of the LangGraph
  :class:`~agent_server.protocols.langgraph.parts.PartTranslator`) that the events source
  calls, so the frames are the same by construction; ``tests/test_sources.py`` proves it
  on every graph of the repository and a corpus of the cases the translator handles.
- ``events``: ``astream_events`` v2 itself, kept as the oracle of that test and
  selectable (``AGENT_SERVER_EVENT_SOURCE=events``). A LangGraph API run that asks for
  the ``events`` stream mode (which is ``astream_events`` output) always uses it.

Decisions (read before changing):

- The handler runs inline (``run_inline``) on the event loop, so a fact becomes a frame
  in the log at the moment the callback fires, with no task switch; a callback fired on
  another thread (a sync node or tool runs in an executor) is handed to the loop with
  ``call_soon_threadsafe`` first: translators and the log are only touched on the loop,
  in callback order, as ``astream_events`` itself delivers such callbacks.
- Frames from the two mechanisms (callbacks, stream-mode chunks) interleave as they do
  under ``astream_events``, whose stream-mode chunks are also emitted when the graph's
  own stream yields them; where the order of two concurrent mechanisms can differ
  (a stream writer's ``custom`` frame and its tool's ``tool_end``), it can differ under
  both sources alike.
- The handler has ``tap_output_aiter`` / ``tap_output_iter``, which makes it one of
  LangChain's streaming handlers: a chat model called with ``invoke`` inside a node then
  streams token by token, as it does under ``astream_events``.
- Names follow ``astream_events``: a run's ``name`` argument, else its serialized
  ``name``, else the last part of its serialized ``id``; a tool's input is ``inputs or {}``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Literal, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig

from agent_server.frames import Emitted, Encoded
from agent_server.protocols.langgraph.parts import PartTranslator
from agent_server.translate import NOSTREAM_TAG, STREAM_MODE, EventTranslator, namespace_of

EventSource = Literal["callbacks", "events"]
T = TypeVar("T")
Emit = Callable[[Emitted], None]


def run_name(name: str | None, serialized: Mapping[str, Any] | None) -> str:
    """A run's name as ``astream_events`` gives it."""
    if name is not None:
        return name
    if serialized:
        if "name" in serialized:
            return str(serialized["name"])
        if "id" in serialized:
            return str(serialized["id"][-1])
    return "Unnamed"


class FrameCallbacks(BaseCallbackHandler):
    """Facts from LangChain's callbacks, straight into the translators (see the module
    docstring); one per run."""

    run_inline = True
    ignore_retriever = True
    ignore_retry = True

    def __init__(
        self, translator: EventTranslator, parts: PartTranslator | None, emit: Emit
    ) -> None:
        self.translator = translator
        self.parts = parts
        self.emit = emit
        self._ignore_chain = parts is None or not parts.wants_messages
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        # chat model run -> (node, namespace), read once at its start; a "nostream" one
        # is not there (its tokens are not frames).
        self._models: dict[UUID, tuple[str | None, list[str]]] = {}
        self._quiet: set[UUID] = set()
        self._tools: dict[UUID, str] = {}

    @property
    def ignore_chain(self) -> bool:
        """Chains matter only to the LangGraph API's messages modes (and cost a callback
        per runnable of every step)."""
        return self._ignore_chain

    def _emit(self, frames: list[Emitted]) -> None:
        for frame in frames:
            self.emit(frame)

    def _elsewhere(self, method: Callable[..., None], *args: Any) -> bool:
        """On another thread: hand the call to the loop (in order) and say so."""
        if threading.get_ident() == self._thread:
            return False
        self._loop.call_soon_threadsafe(method, *args)
        return True

    # -- streaming handler: models stream under it, outputs pass through untouched -----

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        return output

    # -- chat models --------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._elsewhere(self._model_start, run_id, tags or [], metadata or {}):
            return
        self._model_start(run_id, tags or [], metadata or {})

    def _model_start(self, run_id: UUID, tags: list[str], metadata: dict[str, Any]) -> None:
        if NOSTREAM_TAG in tags:
            self._quiet.add(run_id)
        else:
            self._models[run_id] = (metadata.get("langgraph_node"), namespace_of(metadata))
        if self.parts is not None and self.parts.wants_messages:
            self.parts.model_start(run_id, tags, metadata)

    def on_llm_new_token(
        self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any
    ) -> None:
        if self._elsewhere(self._model_token, token, chunk, run_id):
            return
        self._model_token(token, chunk, run_id)

    def _model_token(self, token: Any, chunk: Any, run_id: UUID) -> None:
        model = self._models.get(run_id)
        if model is None and run_id not in self._quiet:
            return  # a completion model (not a chat model): no frames
        message = chunk.message if chunk is not None else AIMessageChunk(content=token)
        frames = self.translator.model_token(message, *model) if model is not None else []
        if self.parts is not None and self.parts.wants_messages:
            # The chunk's part rides on its token frame, so it is built before the frame
            # is emitted; what does not ride (no token: a tool call chunk) follows it.
            extra = self.parts.model_chunk(run_id, message, token_of(frames))
            self._emit(frames)
            self._emit(extra)
        else:
            self._emit(frames)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        if self._elsewhere(self._model_end, response, run_id):
            return
        self._model_end(response, run_id)

    def _model_end(self, response: LLMResult, run_id: UUID) -> None:
        if self._models.pop(run_id, None) is None and run_id not in self._quiet:
            return
        self._quiet.discard(run_id)
        output: Any = {}
        for generation in response.generations:
            if generation:
                output = getattr(generation[0], "message", {})
                break
        self._emit(self.translator.model_end(output))
        if self.parts is not None and self.parts.wants_messages:
            self._emit(self.parts.model_end(run_id, output))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._models.pop(run_id, None)
        self._quiet.discard(run_id)

    # -- tools ----------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        inputs: Any = None,
        **kwargs: Any,
    ) -> None:
        args = (run_id, run_name(name, serialized), inputs or {}, metadata or {})
        if self._elsewhere(self._tool_start, *args, kwargs.get("tool_call_id")):
            return
        self._tool_start(*args, kwargs.get("tool_call_id"))

    def _tool_start(
        self,
        run_id: UUID,
        name: str,
        input: Any,
        metadata: dict[str, Any],
        tool_call_id: str | None,
    ) -> None:
        key = str(run_id)
        if tool_call_id:
            self.translator.tool_call_ids.by_run[key] = tool_call_id
        self._tools[run_id] = name
        self._emit(self.translator.tool_start(key, tool_call_id, name, input, metadata))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._elsewhere(self._tool_end, output, run_id):
            return
        self._tool_end(output, run_id)

    def _tool_end(self, output: Any, run_id: UUID) -> None:
        name = self._tools.pop(run_id, None)
        if name is not None:
            self._emit(self.translator.tool_end(str(run_id), name, output))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if self._elsewhere(self._tool_error, error, run_id, kwargs.get("tool_call_id")):
            return
        self._tool_error(error, run_id, kwargs.get("tool_call_id"))

    def _tool_error(self, error: BaseException, run_id: UUID, tool_call_id: str | None) -> None:
        name = self._tools.pop(run_id, None)
        if name is not None:
            self._emit(self.translator.tool_error(str(run_id), name, error, tool_call_id))

    # -- custom events --------------------------------------------------------------------

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._elsewhere(self._custom_event, name, data):
            return
        self._custom_event(name, data)

    def _custom_event(self, name: str, data: Any) -> None:
        self._emit(self.translator.custom_event(name, data))

    # -- chains (only for the LangGraph API's messages modes) ------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_type: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if run_type not in (None, "chain"):
            return  # astream_events names those on_<run_type>_start
        node = run_name(name, serialized)
        args = (run_id, node, tags or [], metadata or {}, inputs)
        if self._elsewhere(self._node_start, *args):
            return
        self._node_start(*args)

    def _node_start(
        self, run_id: UUID, name: str, tags: list[str], metadata: dict[str, Any], inputs: Any
    ) -> None:
        assert self.parts is not None
        # astream_events leaves out an input of {"input": ""} (a runnable not sending it).
        self.parts.node_start(
            run_id, name, tags, metadata, None if inputs == {"input": ""} else inputs
        )

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._elsewhere(self._node_end, outputs, run_id):
            return
        self._node_end(outputs, run_id)

    def _node_end(self, outputs: Any, run_id: UUID) -> None:
        assert self.parts is not None
        self._emit(self.parts.node_end(run_id, outputs))


async def drive_callbacks(
    graph: Any,
    input: Any,
    config: RunnableConfig,
    translator: EventTranslator,
    parts: PartTranslator | None,
    emit: Emit,
    stream_kwargs: Mapping[str, Any],
) -> None:
    """Run ``graph`` to its end, emitting its frames (and parts): the default source."""
    config["callbacks"] = [FrameCallbacks(translator, parts, emit)]
    stream_mode = STREAM_MODE + (parts.options.graph_modes() if parts is not None else [])
    async for ns, mode, payload in graph.astream(
        input, config, stream_mode=stream_mode, subgraphs=True, **stream_kwargs
    ):
        for frame in translator.stream_chunk(ns, mode, payload):
            emit(frame)
        if parts is not None:
            for frame in parts.stream_chunk(ns, mode, payload):
                emit(frame)


async def drive_events(
    graph: Any,
    input: Any,
    config: RunnableConfig,
    translator: EventTranslator,
    parts: PartTranslator | None,
    emit: Emit,
    stream_kwargs: Mapping[str, Any],
) -> None:
    """Run ``graph`` to its end through ``astream_events`` v2: the oracle source."""
    config["callbacks"] = [translator.tool_call_ids]
    stream_mode = STREAM_MODE + (parts.options.graph_modes() if parts is not None else [])
    events = graph.astream_events(
        input, config, version="v2", stream_mode=stream_mode, subgraphs=True, **stream_kwargs
    )
    if parts is None:
        async for event in events:
            for frame in translator.translate(event):
                emit(frame)
        return
    async for event in events:
        frames = translator.translate(event)
        extra = parts.translate(event, token_of(frames))  # before the token is emitted
        for frame in frames:
            emit(frame)
        for frame in extra:
            emit(frame)


def token_of(frames: list[Emitted]) -> Encoded | None:
    """The token frame among one chunk's frames, which its LangGraph part rides on."""
    if len(frames) == 1:
        frame = frames[0]
        if isinstance(frame, Encoded) and frame.type == "token":
            return frame
    return None


DRIVERS = {"callbacks": drive_callbacks, "events": drive_events}
