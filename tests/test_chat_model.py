from __future__ import annotations

import ast
import asyncio
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agent_server.chat_model import Plan, ScriptedChatModel, load_chat_model
from tests.openai_stub import OpenAIStub

_OPERATORS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp):
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp):
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression: {ast.dump(node)}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses."""
    value = _evaluate(ast.parse(expression, mode="eval").body)
    return str(int(value)) if value == int(value) else str(value)


@tool
def search(query: str) -> str:
    """Search for a query."""
    return f"results for {query}"


def chunks_of(model: Runnable[Any, Any], messages: Sequence[BaseMessage]) -> list[AIMessageChunk]:
    return list(model.stream(list(messages)))


async def achunks_of(
    model: Runnable[Any, Any], messages: Sequence[BaseMessage]
) -> list[AIMessageChunk]:
    return [chunk async for chunk in model.astream(list(messages))]


def merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    return chunks[0] + chunks[1:]


def build_react_graph(model: BaseChatModel) -> Any:
    bound = model.bind_tools([calculator])

    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([calculator]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


async def run_events(graph: Any, text: str) -> list[dict[str, Any]]:
    return [
        event
        async for event in graph.astream_events({"messages": [HumanMessage(text)]}, version="v2")
    ]


def model_calls(events: list[dict[str, Any]]) -> list[list[AIMessageChunk]]:
    """The streamed chunks of each model call, in order of the calls."""
    calls: dict[str, list[AIMessageChunk]] = {}
    for event in events:
        if event["event"] == "on_chat_model_stream":
            calls.setdefault(event["run_id"], []).append(event["data"]["chunk"])
    return list(calls.values())


# --- text streaming ---------------------------------------------------------------


async def test_text_streams_one_chunk_per_word() -> None:
    chunks = await achunks_of(ScriptedChatModel(), [HumanMessage("hello there world")])
    *tokens, last = chunks
    text = "".join(str(c.content) for c in tokens)
    assert text.startswith('You said: "hello there world".')
    assert [str(c.content) for c in tokens] == text.replace(" ", "\0 ").split("\0")
    assert all(c.content for c in tokens)
    assert len({c.id for c in chunks}) == 1
    assert last.content == ""
    assert last.chunk_position == "last"
    assert last.response_metadata == {"model_name": "scripted", "finish_reason": "stop"}
    assert last.usage_metadata == {
        "input_tokens": 3,
        "output_tokens": len(tokens),
        "total_tokens": 3 + len(tokens),
    }
    merged = merge(chunks)
    assert merged.content == text
    assert merged.usage_metadata == last.usage_metadata


async def test_stream_is_deterministic_and_sync_matches_async() -> None:
    model = ScriptedChatModel().bind_tools([calculator, search])
    messages = [HumanMessage("tell me something")]

    def shape(chunks: list[AIMessageChunk]) -> list[tuple[Any, ...]]:
        return [(c.content, c.tool_call_chunks, c.usage_metadata) for c in chunks]

    first = await achunks_of(model, messages)
    second = await achunks_of(model, messages)
    assert shape(first) == shape(second)
    assert shape(chunks_of(model, messages)) == shape(first)
    assert "calculator, search" in str(merge(first).content)


async def test_invoke_returns_the_merged_stream() -> None:
    model = ScriptedChatModel().bind_tools([calculator])
    for text in ["hi", '/calculator {"expression": "1+2"}']:
        streamed = merge(await achunks_of(model, [HumanMessage(text)]))
        for message in (await model.ainvoke([HumanMessage(text)]), model.invoke(text)):
            assert isinstance(message, AIMessage)
            assert message.content == streamed.content
            assert message.tool_calls == streamed.tool_calls
            assert message.usage_metadata == streamed.usage_metadata


async def test_content_blocks_and_stop_sequences() -> None:
    model = ScriptedChatModel()
    blocks = [{"type": "text", "text": "from blocks"}, {"type": "image", "url": "x"}]
    message = await model.ainvoke([HumanMessage(content=blocks)])  # type: ignore[arg-type]
    assert str(message.content).startswith('You said: "from blocks".')
    message = await model.ainvoke([HumanMessage("hi")], stop=["offline"])
    assert message.content == 'You said: "hi". I am the '


async def test_token_delay_spaces_out_chunks() -> None:
    model = ScriptedChatModel(token_delay=0.01)
    started = time.perf_counter()
    chunks = await achunks_of(model, [HumanMessage("hi")])
    assert time.perf_counter() - started >= 0.01 * (len(chunks) - 1)


async def test_astream_yields_to_the_event_loop_between_chunks() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    seen = []
    async for _ in ScriptedChatModel().astream("a b c d e f g h"):
        seen.append(ticks)
    task.cancel()
    assert len(seen) > 10
    assert seen[-1] - seen[0] >= len(seen) - 1


# --- tool calls ------------------------------------------------------------------


async def test_slash_command_streams_a_tool_call() -> None:
    model = ScriptedChatModel().bind_tools([calculator])
    chunks = await achunks_of(model, [HumanMessage('/calculator {"expression": "1+2"}')])
    call_chunks = [c.tool_call_chunks[0] for c in chunks if c.tool_call_chunks]
    assert len(call_chunks) > 2
    first, *rest = call_chunks
    assert first["name"] == "calculator"
    assert first["id"] is not None and first["id"].startswith("call_")
    assert first["index"] == 0
    assert all(c["name"] is None and c["id"] is None and c["index"] == 0 for c in rest)
    assert "".join(c["args"] or "" for c in call_chunks) == '{"expression": "1+2"}'
    assert chunks[-1].response_metadata["finish_reason"] == "tool_calls"
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata["output_tokens"] == len(call_chunks)

    merged = merge(chunks)
    assert merged.content == ""
    assert merged.tool_calls == [
        {
            "name": "calculator",
            "args": {"expression": "1+2"},
            "id": first["id"],
            "type": "tool_call",
        }
    ]


async def test_several_slash_lines_make_parallel_calls() -> None:
    model = ScriptedChatModel().bind_tools([calculator, search])
    text = 'Please:\n/calculator {"expression": "2*3"}\n  /search {"query": "langgraph"}\n'
    chunks = await achunks_of(model, [HumanMessage(text)])
    starts = [
        c.tool_call_chunks[0] for c in chunks if c.tool_call_chunks and c.tool_call_chunks[0]["id"]
    ]
    assert [(s["name"], s["index"]) for s in starts] == [("calculator", 0), ("search", 1)]
    calls = merge(chunks).tool_calls
    assert [(c["name"], c["args"]) for c in calls] == [
        ("calculator", {"expression": "2*3"}),
        ("search", {"query": "langgraph"}),
    ]
    assert calls[0]["id"] != calls[1]["id"]
    assert [c["id"] for c in merge(await achunks_of(model, [HumanMessage(text)])).tool_calls] == [
        c["id"] for c in calls
    ]


async def test_slash_command_without_args_sends_empty_object() -> None:
    model = ScriptedChatModel().bind_tools([search])
    message = await model.ainvoke("/search")
    assert isinstance(message, AIMessage)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("search", {})]


async def test_tool_call_ids_differ_between_turns() -> None:
    model = ScriptedChatModel().bind_tools([calculator])
    line = HumanMessage('/calculator {"expression": "1+1"}')
    first = await model.ainvoke([line])
    assert isinstance(first, AIMessage)
    call_id = first.tool_calls[0]["id"]
    assert call_id is not None
    history = [line, first, ToolMessage("2", tool_call_id=call_id, name="calculator")]
    answer = await model.ainvoke(history)
    again = await model.ainvoke([*history, answer, line])
    assert isinstance(again, AIMessage)
    assert again.tool_calls[0]["id"] != call_id


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("what is 12*(3+4)?", "12*(3+4)"),
        ("Compute 2 + 2.", "2 + 2"),
        ("(how much is 7/2)", "7/2"),
        ("2**10 and 3^2", "2**10"),
    ],
)
async def test_arithmetic_becomes_a_calculator_call(text: str, expression: str) -> None:
    message = await ScriptedChatModel().bind_tools([calculator]).ainvoke(text)
    assert isinstance(message, AIMessage)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("calculator", {"expression": expression})
    ]


@pytest.mark.parametrize("text", ["version 3.11 is out", "what is -3?", "call 555 1234"])
async def test_numbers_without_binary_operator_are_echoed(text: str) -> None:
    message = await ScriptedChatModel().bind_tools([calculator]).ainvoke(text)
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert str(message.content).startswith(f'You said: "{text}"')


async def test_arithmetic_without_calculator_is_echoed() -> None:
    message = await ScriptedChatModel().bind_tools([search]).ainvoke("what is 1+1?")
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert "bound tools: search" in str(message.content)


async def test_unknown_tool_is_answered_in_text() -> None:
    model = ScriptedChatModel().bind_tools([calculator, search])
    message = await model.ainvoke('/weather {"city": "Paris"}')
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert message.content == (
        "The tool `weather` is not available (bound tools: calculator, search)."
    )
    message = await ScriptedChatModel().ainvoke("/weather")
    assert message.content == "The tool `weather` is not available (bound tools: none)."


@pytest.mark.parametrize(
    ("args", "error"),
    [("{expression: 1}", "not valid JSON: Expecting property name"), ("[1]", "JSON object")],
)
async def test_bad_arguments_are_answered_in_text(args: str, error: str) -> None:
    message = await ScriptedChatModel().bind_tools([calculator]).ainvoke(f"/calculator {args}")
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert error in str(message.content)


async def test_tool_results_are_reported_in_order() -> None:
    call = {"name": "calculator", "args": {"expression": "2+2"}, "id": "c1"}
    messages = [
        HumanMessage("2+2 and a search"),
        AIMessage("", tool_calls=[call, {**call, "name": "search", "id": "c2"}]),
        ToolMessage("4", tool_call_id="c1", name="calculator"),
        ToolMessage("index offline", tool_call_id="c2", status="error"),
    ]
    message = await ScriptedChatModel().bind_tools([calculator]).ainvoke(messages)
    assert message.content == (
        'The calculator tool returned 4. The search tool failed: "index offline".'
    )


async def test_plan_can_be_overridden() -> None:
    class Verbose(ScriptedChatModel):
        def plan(self, messages: Sequence[BaseMessage], tool_names: Sequence[str]) -> Plan:
            return Plan(text=" ".join(f"w{i}" for i in range(2000)))

    chunks = await achunks_of(Verbose(), [HumanMessage("go")])
    assert len(chunks) == 2001
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata["output_tokens"] == 2000


# --- through a LangGraph ReAct loop ----------------------------------------------


async def test_scripted_model_in_a_react_graph() -> None:
    events = await run_events(build_react_graph(ScriptedChatModel()), "what is 12*(3+4)?")
    first_call, second_call = model_calls(events)

    call_chunks = [c for c in first_call if c.tool_call_chunks]
    assert len(call_chunks) > 1
    assert call_chunks[0].tool_call_chunks[0]["name"] == "calculator"
    assert call_chunks[1].tool_call_chunks[0]["name"] is None

    names = [e["event"] for e in events if e["name"] == "calculator"]
    assert names == ["on_tool_start", "on_tool_end"]
    tool_start = next(e for e in events if e["event"] == "on_tool_start")
    assert tool_start["data"]["input"] == {"expression": "12*(3+4)"}
    tool_end = next(e for e in events if e["event"] == "on_tool_end")
    assert tool_end["data"]["output"].content == "84"

    tokens = [str(c.content) for c in second_call if c.content]
    assert len(tokens) > 3
    assert "".join(tokens) == "The calculator tool returned 84."
    order = [e["event"] for e in events]
    assert order.index("on_tool_end") < max(
        i for i, e in enumerate(events) if e["event"] == "on_chat_model_stream"
    )


# --- the OpenAI path against a loopback server -------------------------------------


@pytest.fixture
def openai_stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(tool_args={"expression": "6*7"}) as stub:
        yield stub


async def test_openai_model_in_a_react_graph(openai_stub: OpenAIStub) -> None:
    model = load_chat_model("openai:gpt-test", api_key="sk-test", base_url=openai_stub.base_url)
    events = await run_events(build_react_graph(model), "what is six times seven?")

    first_request, second_request = openai_stub.requests
    assert first_request["model"] == "gpt-test"
    assert first_request["stream"] is True
    assert first_request["stream_options"] == {"include_usage": True}
    assert [t["function"]["name"] for t in first_request["tools"]] == ["calculator"]
    assert second_request["messages"][-1]["role"] == "tool"
    assert second_request["messages"][-1]["content"] == "42"

    first_call, second_call = model_calls(events)
    call_chunks = [c for c in first_call if c.tool_call_chunks]
    assert len(call_chunks) > 1
    assert call_chunks[0].tool_call_chunks[0]["name"] == "calculator"
    assert call_chunks[0].tool_call_chunks[0]["id"] == "call_stub_1"
    tool_start = next(e for e in events if e["event"] == "on_tool_start")
    assert tool_start["name"] == "calculator"
    assert tool_start["data"]["input"] == {"expression": "6*7"}

    tokens = [str(c.content) for c in second_call if c.content]
    assert len(tokens) > 3
    assert "".join(tokens) == "The calculator tool returned 42."
    ends = [e["data"]["output"] for e in events if e["event"] == "on_chat_model_end"]
    assert [m.usage_metadata["input_tokens"] for m in ends] == [10, 10]
    assert ends[-1].content == "The calculator tool returned 42."


# --- load_chat_model ---------------------------------------------------------------


def test_load_scripted() -> None:
    assert isinstance(load_chat_model("scripted"), ScriptedChatModel)
    assert isinstance(load_chat_model(), ScriptedChatModel)


@pytest.mark.parametrize("spec", ["gpt-4o", "openai:", "anthropic:claude", "scripted:0.1", ""])
def test_load_unknown_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="expected 'scripted' or 'openai:<model>'"):
        load_chat_model(spec)


def test_load_openai_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        load_chat_model("openai:gpt-test")


def test_load_openai_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    model = load_chat_model("openai:gpt-test", base_url="http://127.0.0.1:9/v1")
    assert isinstance(model, BaseChatModel)
    assert model._llm_type == "openai-chat"
