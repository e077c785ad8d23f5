"""The served agent on a real OpenAI-compatible endpoint (a loopback stub), end to end.

``AGENT_SERVER_MODEL=openai:<model>`` makes the server build ``ChatOpenAI``; the stub
streams ``chat.completion.chunk``s with tool-call deltas, so LangChain's real client
code parses them and our frames come out of a genuine OpenAI stream.
"""

from __future__ import annotations

import httpx
from httpx_sse import connect_sse

from agent_server.app import create_app
from agent_server.frames import parse_frame
from tests.conftest import test_settings
from tests.helpers import dispatched
from tests.live import live_server
from tests.openai_stub import OpenAIStub


def test_agent_streams_from_an_openai_compatible_endpoint() -> None:
    with OpenAIStub(tool_args={"expression": "6*7"}) as stub:
        settings = test_settings(
            model="openai:gpt-test", openai_api_key="sk-test", openai_base_url=stub.base_url
        )
        with (
            live_server(create_app(settings)) as url,
            httpx.Client(timeout=30) as client,
            connect_sse(
                client, "POST", f"{url}/runs/stream", json={"graph": "agent", "message": "go"}
            ) as source,
        ):
            frames = [parse_frame(e.data) for e in dispatched(source) if e.data != "[DONE]"]
    kinds = [f.type for f in frames]
    assert kinds[0] == "run_start" and kinds[-1] == "done"
    start = next(f for f in frames if f.type == "tool_start")
    end = next(f for f in frames if f.type == "tool_end")
    assert (start.name, start.input) == ("calculator", {"expression": "6*7"})
    assert start.tool_call_id == end.tool_call_id and start.tool_call_id.startswith("call_stub")
    assert end.output == "42"
    tokens = [f for f in frames if f.type == "token"]
    assert len(tokens) > 3 and "42" in "".join(t.content for t in tokens)
    assert frames[-1].usage.total_tokens > 0
    # the real client sent our registered tools and asked for streamed usage
    first = stub.requests[0]
    assert first["stream"] is True and first["model"] == "gpt-test"
    assert {t["function"]["name"] for t in first["tools"]} >= {"calculator", "current_time"}
