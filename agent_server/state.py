"""What the app's lifespan builds and every route uses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from agent_server.assistants import AssistantRecords, MemoryAssistants
from agent_server.connections import ConnectionManager
from agent_server.crons import CronRecords, MemoryCrons
from agent_server.graphs import GraphRegistry
from agent_server.metrics import Metrics
from agent_server.runs import RunManager
from agent_server.settings import Settings
from agent_server.stores import MemoryStore
from agent_server.streams import Streams
from agent_server.supervise import Supervisor
from agent_server.thread_ttl import MemoryExpiries, ThreadExpiries
from agent_server.threads import MemoryThreads, ThreadRecords
from agent_server.tools import ToolRegistry
from agent_server.webhooks import Webhooks


@dataclass
class AppState:
    settings: Settings
    tools: ToolRegistry
    graphs: GraphRegistry
    runs: RunManager
    checkpointer: BaseCheckpointSaver[Any]
    model: BaseChatModel
    streams: Streams
    metrics: Metrics
    connections: ConnectionManager
    # client id -> agent_server.ws.Session (typed loosely: ws imports this module)
    sessions: dict[str, Any]
    # the lifespan's background jobs (restarted when they fail)
    supervisor: Supervisor = field(default_factory=Supervisor)
    # what the LangGraph API keeps of threads besides their checkpoints
    threads: ThreadRecords = field(default_factory=MemoryThreads)
    # LangGraph's store (every graph has it too), assistants, thread TTLs (issue 18)
    store: BaseStore = field(default_factory=MemoryStore)
    assistants: AssistantRecords = field(default_factory=MemoryAssistants)
    thread_ttl: ThreadExpiries = field(default_factory=MemoryExpiries)
    # the LangGraph API's crons and the deliverer of runs' webhooks (issue 18)
    crons: CronRecords = field(default_factory=MemoryCrons)
    webhooks: Webhooks = field(default_factory=Webhooks)
    started_at: float = field(default_factory=time.time)
