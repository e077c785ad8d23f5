"""Chat models: an offline scripted model, and the factory that picks a model by spec.

``ScriptedChatModel`` lets the server, its examples and its tests run with no API key
and no network. Its answer is a pure function of the conversation and the bound tools,
so two runs of one conversation stream the same chunks (message ids aside: LangChain
assigns those per run).

Decisions:

- It streams the way a provider does, not the way LangChain's fake models do: text one
  word at a time (each word with its leading whitespace), tool calls as
  ``tool_call_chunks`` (a call's first chunk carries ``name``, ``id`` and ``index``; the
  later ones only pieces of the JSON ``args`` under the same ``index``), then one last
  chunk without content that carries ``usage_metadata``, ``finish_reason`` and
  ``chunk_position="last"``. Finish and usage come after the last delta, as in OpenAI's
  stream, so consumers of events meet the same shapes offline as online.
- Chunks carry no message id; LangChain stamps every chunk of one call with the same
  ``lc_run-<run id>``.
- Tool call ids are ``call_`` plus a hash of the conversation and the call's position:
  deterministic for one conversation, and distinct between the model calls of a run
  because each call sees a longer conversation.
- ``_astream`` is native and awaits ``asyncio.sleep(token_delay)`` between chunks even
  when the delay is 0. A real model's tokens arrive from the network; a model that never
  yields would hold the event loop for a whole long answer and stall every other
  connection of the server.
- "Tokens" are counted, not tokenized: input tokens are the words (``\\S+``) of the
  prompt, output tokens the streamed pieces (words and tool-call argument pieces).
- ``invoke`` without streaming runs the same chunks (and delays) and merges them, so the
  streamed and the non-streamed message are equal.
- The behaviour lives in one method, ``plan(messages, tool_names) -> Plan``; subclasses
  override it and keep the streaming, chunking and usage of the base class.
- Mistakes in a user's ``/tool`` line (unknown tool, bad JSON) become a text answer, not
  an exception, so a chat client shows them.
- ``load_chat_model`` imports ``langchain_openai`` only for ``openai:`` specs: importing it
  costs over a second, which the default offline model should not pay.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolMessage,
    UsageMetadata,
    message_chunk_to_message,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

__all__ = [
    "DEFAULT_MODEL_SPEC",
    "Plan",
    "PlannedToolCall",
    "ScriptedChatModel",
    "load_chat_model",
]

DEFAULT_MODEL_SPEC = "scripted"

# A word with its leading whitespace; trailing whitespace stays with the last word.
_TOKEN = re.compile(r"\s*\S+(?:\s+$)?")
_WORD = re.compile(r"\S+")
# Pieces of a JSON text as an LLM streams them: runs of punctuation, runs of the rest.
_JSON_PIECE = re.compile(r'\s*(?:[{}\[\],:"]+|(?:[^\s{}\[\],:"\\]|\\.)+)')
_COMMAND = re.compile(r"/([A-Za-z_][\w.-]*)(?:\s+(.*))?")
_EXPRESSION_CANDIDATE = re.compile(r"[\d.()+\-*/%^\s]+")


@dataclass(frozen=True)
class PlannedToolCall:
    """A tool call the scripted model will stream; ``id=None`` derives one."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Plan:
    """What the scripted model answers: text (streamed first), tool calls, or both."""

    text: str = ""
    tool_calls: Sequence[PlannedToolCall] = ()


class ScriptedChatModel(BaseChatModel):
    """A deterministic offline chat model that streams like a real provider.

    Override :meth:`plan` to change what it says; see the module docstring for the rules.
    """

    token_delay: float = Field(default=0.0, ge=0.0)
    """Seconds to wait between streamed chunks, so demos visibly stream."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": "scripted", "token_delay": self.token_delay}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools in OpenAI format; ``tool_choice`` is accepted and ignored."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
        """Decide the answer to ``messages`` given the names of the bound tools.

        1. Tool results after the last human message: one sentence per result.
        2. Lines ``/<tool> {json}`` in the last human message: one call per line, or a
           text naming the problem (tool not bound, arguments not a JSON object).
        3. An arithmetic expression, with ``calculator`` bound: a calculator call.
        4. Otherwise: a sentence quoting the message and explaining how to use tools.
        """
        last_human = _last_human_index(messages)
        results = [m for m in messages[last_human + 1 :] if isinstance(m, ToolMessage)]
        if results:
            return Plan(text=" ".join(_describe_result(r, messages) for r in results))
        text = str(messages[last_human].text) if last_human >= 0 else ""
        commands = [m for line in text.splitlines() if (m := _COMMAND.fullmatch(line.strip()))]
        if commands:
            return _plan_commands(commands, tool_names)
        if "calculator" in tool_names and (expression := _find_expression(text)):
            return Plan(tool_calls=[PlannedToolCall("calculator", {"expression": expression})])
        return Plan(text=_echo(text, tool_names))

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, tools: Any
    ) -> Iterator[AIMessageChunk]:
        plan = self.plan(messages, _tool_names(tools))
        text = plan.text
        for stop_sequence in stop or ():
            text = text.split(stop_sequence, 1)[0]
        emitted = 0
        for token in _TOKEN.findall(text):
            emitted += 1
            yield AIMessageChunk(content=token)
        digest = _conversation_digest(messages) if plan.tool_calls else ""
        for index, call in enumerate(plan.tool_calls):
            call_id = call.id or _tool_call_id(digest, index)
            for n, piece in enumerate(_json_pieces(json.dumps(call.args, ensure_ascii=False))):
                emitted += 1
                first = n == 0
                yield AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        tool_call_chunk(
                            name=call.name if first else None,
                            args=piece,
                            id=call_id if first else None,
                            index=index,
                        )
                    ],
                )
        input_tokens = sum(_count_words(m) for m in messages)
        yield AIMessageChunk(
            content="",
            usage_metadata=UsageMetadata(
                input_tokens=input_tokens,
                output_tokens=emitted,
                total_tokens=input_tokens + emitted,
            ),
            response_metadata={
                "model_name": "scripted",
                "finish_reason": "tool_calls" if plan.tool_calls else "stop",
            },
            chunk_position="last",
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for i, chunk in enumerate(self._chunks(messages, stop, kwargs.get("tools"))):
            if i and self.token_delay:
                time.sleep(self.token_delay)
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for i, chunk in enumerate(self._chunks(messages, stop, kwargs.get("tools"))):
            if i:
                await asyncio.sleep(self.token_delay)
            yield ChatGenerationChunk(message=chunk)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [c.message for c in self._stream(messages, stop, None, **kwargs)]
        return _merge(chunks)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [c.message async for c in self._astream(messages, stop, None, **kwargs)]
        return _merge(chunks)


def load_chat_model(
    spec: str = DEFAULT_MODEL_SPEC, *, api_key: str | None = None, base_url: str | None = None
) -> BaseChatModel:
    """Build the chat model named by ``spec``: ``"scripted"`` or ``"openai:<model>"``.

    Without ``api_key``/``base_url``, ``ChatOpenAI`` reads ``OPENAI_API_KEY`` and
    ``OPENAI_BASE_URL`` itself; a missing key is reported as a ``ValueError``.
    """
    if spec == "scripted":
        return ScriptedChatModel()
    provider, _, model = spec.partition(":")
    if provider != "openai" or not model:
        raise ValueError(f"unknown model spec {spec!r}; expected 'scripted' or 'openai:<model>'")
    import openai
    from langchain_openai import ChatOpenAI

    options: dict[str, Any] = {}
    if api_key is not None:
        options["api_key"] = api_key
    if base_url is not None:
        options["base_url"] = base_url
    try:
        return ChatOpenAI(model=model, streaming=True, stream_usage=True, **options)
    except openai.OpenAIError as error:
        raise ValueError(
            f"cannot create the OpenAI model {model!r}: {error} "
            "Set OPENAI_API_KEY (or pass an API key) to use 'openai:' models."
        ) from error


def _merge(chunks: Sequence[BaseMessage]) -> ChatResult:
    first, *rest = (c for c in chunks if isinstance(c, AIMessageChunk))
    return ChatResult(generations=[ChatGeneration(message=message_chunk_to_message(first + rest))])


def _tool_names(tools: Any) -> list[str]:
    """Names of the tools bound in OpenAI format (others, e.g. server tools, have none)."""
    names: list[str] = []
    for tool in tools or ():
        if isinstance(tool, dict):
            name = (tool.get("function") or {}).get("name") or tool.get("name")
            if isinstance(name, str):
                names.append(name)
    return names


def _last_human_index(messages: Sequence[BaseMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].type == "human":
            return i
    return -1


def _describe_result(result: ToolMessage, messages: Sequence[BaseMessage]) -> str:
    name = result.name or _tool_name_for_call(result.tool_call_id, messages)
    subject = f"The {name} tool" if name else "The tool"
    content = str(result.text).strip()
    if result.status == "error":
        return f'{subject} failed: "{content}".'
    if not content:
        return f"{subject} returned nothing."
    return f"{subject} returned {content}" + ("" if content[-1] in ".!?" else ".")


def _tool_name_for_call(call_id: str, messages: Sequence[BaseMessage]) -> str | None:
    for message in messages:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call["id"] == call_id:
                    return call["name"]
    return None


def _plan_commands(commands: list[re.Match[str]], tool_names: Sequence[str]) -> Plan:
    calls: list[PlannedToolCall] = []
    problems: list[str] = []
    for command in commands:
        name, raw_args = command.group(1), (command.group(2) or "").strip()
        if name not in tool_names:
            bound = ", ".join(tool_names) if tool_names else "none"
            problems.append(f"The tool `{name}` is not available (bound tools: {bound}).")
            continue
        try:
            args = json.loads(raw_args) if raw_args else {}
        except json.JSONDecodeError as error:
            problems.append(f"The arguments for `{name}` are not valid JSON: {error}.")
            continue
        if not isinstance(args, dict):
            problems.append(f"The arguments for `{name}` must be a JSON object.")
            continue
        calls.append(PlannedToolCall(name, args))
    return Plan(text=" ".join(problems)) if problems else Plan(tool_calls=calls)


def _find_expression(text: str) -> str | None:
    """The first run of numbers and operators that parses with a binary operator."""
    for match in _EXPRESSION_CANDIDATE.finditer(text):
        candidate = match.group().strip().rstrip(".").strip()
        if not any(c.isdigit() for c in candidate):
            continue
        # A closing sentence or a bracketed aside can leave an unmatched parenthesis.
        for expression in (candidate, candidate.strip("() ")):
            if _is_arithmetic(expression):
                return expression
    return None


def _is_arithmetic(expression: str) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    return any(isinstance(node, ast.BinOp) for node in ast.walk(tree))


def _echo(text: str, tool_names: Sequence[str]) -> str:
    answer = f'You said: "{" ".join(text.split())}". I am the offline scripted model'
    if not tool_names:
        return answer + "; no tools are bound, so I can only repeat what you say."
    answer += (
        f': send "/<tool> {{json}}" on its own line to call a tool '
        f"(bound tools: {', '.join(tool_names)})"
    )
    if "calculator" in tool_names:
        answer += ", or ask me to compute something like 2+2"
    return answer + "."


def _json_pieces(text: str) -> list[str]:
    pieces: list[str] = _JSON_PIECE.findall(text)
    return pieces if "".join(pieces) == text else [text]


def _conversation_digest(messages: Sequence[BaseMessage]) -> str:
    digest = hashlib.sha256()
    for message in messages:
        parts = [message.type, str(message.text)]
        if isinstance(message, AIMessage):
            parts.extend(
                json.dumps(call, sort_keys=True, default=str) for call in message.tool_calls
            )
        elif isinstance(message, ToolMessage):
            parts.append(message.tool_call_id)
        digest.update("\0".join(parts).encode() + b"\1")
    return digest.hexdigest()


def _tool_call_id(digest: str, index: int) -> str:
    return "call_" + hashlib.sha256(f"{digest}:{index}".encode()).hexdigest()[:24]


def _count_words(message: BaseMessage) -> int:
    words = len(_WORD.findall(str(message.text)))
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            words += 1 + len(_WORD.findall(json.dumps(call["args"])))
    return words
