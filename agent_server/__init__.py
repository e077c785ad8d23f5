"""agent-server: run LangGraph agents and stream what they do to clients in real time."""

from agent_server.app import create_app, error_handlers
from agent_server.chat_model import Plan, PlannedToolCall, ScriptedChatModel, load_chat_model
from agent_server.embed import (
    AgentRun,
    get_run_manager,
    get_state,
    lifespan,
    sse_response,
    start_run,
)
from agent_server.frames import (
    PROTOCOL_VERSION,
    BaseFrame,
    Custom,
    Done,
    Error,
    Frame,
    Interrupt,
    RunStart,
    Token,
    ToolEnd,
    ToolError,
    ToolStart,
    Usage,
    encode,
    parse_frame,
)
from agent_server.graphs import GraphEntry, GraphRegistry, UnknownGraphError
from agent_server.notebook import (
    Session,
    load_tools,
    print_stream,
    show,
    stream,
    stream_sync,
)
from agent_server.runs import Forbidden, RunManager, RunRejected
from agent_server.settings import Settings
from agent_server.state import AppState
from agent_server.tools import PluginError, ToolRegistry, UnknownToolError

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AgentRun",
    "AppState",
    "BaseFrame",
    "Custom",
    "Done",
    "Error",
    "Forbidden",
    "Frame",
    "GraphEntry",
    "GraphRegistry",
    "Interrupt",
    "Plan",
    "PlannedToolCall",
    "PluginError",
    "RunManager",
    "RunRejected",
    "RunStart",
    "ScriptedChatModel",
    "Session",
    "Settings",
    "Token",
    "ToolEnd",
    "ToolError",
    "ToolRegistry",
    "ToolStart",
    "UnknownGraphError",
    "UnknownToolError",
    "Usage",
    "create_app",
    "encode",
    "error_handlers",
    "get_run_manager",
    "get_state",
    "lifespan",
    "load_chat_model",
    "load_tools",
    "parse_frame",
    "print_stream",
    "show",
    "sse_response",
    "start_run",
    "stream",
    "stream_sync",
]
