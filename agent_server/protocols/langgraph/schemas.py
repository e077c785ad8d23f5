"""Request bodies of the LangGraph API, as its SDKs send them, and its error body.

Unknown fields are ignored rather than refused: the SDKs send every field they know,
including ones this server does not act on (``webhook``, ``feedback_keys``...), and
``docs/langgraph-api.md`` lists those. Known fields are validated strictly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_server.schemas import ClientId, StoredJSON

StreamMode = Literal[
    "values", "updates", "messages-tuple", "messages", "custom", "events", "debug",
    "tasks", "checkpoints",
]  # fmt: skip


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CommandBody(Body):
    resume: Any = None
    update: Any = None
    goto: Any = None


class RunCreate(Body):
    assistant_id: str = Field(min_length=1)
    input: Any = None
    command: CommandBody | None = None
    config: StoredJSON | None = None  # its metadata is the checkpoints'
    context: dict[str, Any] | None = None
    metadata: StoredJSON | None = None
    stream_mode: list[StreamMode] = Field(default_factory=lambda: ["values"])  # type: ignore[arg-type]
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    on_disconnect: Literal["cancel", "continue"] = "continue"
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    checkpoint: StoredJSON | None = None
    checkpoint_id: ClientId | None = None
    on_completion: Literal["delete", "keep"] = "delete"
    durability: Literal["sync", "async", "exit"] | None = None

    @field_validator("stream_mode", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return ["values"]
        return [value] if isinstance(value, str) else value

    @field_validator("multitask_strategy", "on_disconnect", "if_not_exists", mode="before")
    @classmethod
    def _default_when_null(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value


class ThreadCreate(Body):
    thread_id: ClientId | None = None
    metadata: StoredJSON | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"


class ThreadSearch(Body):
    ids: list[ClientId] | None = None
    metadata: StoredJSON | None = None
    values: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["thread_id", "created_at", "updated_at"] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"


class ThreadUpdate(Body):
    metadata: StoredJSON | None = None


class StateUpdate(Body):
    values: Any = None
    as_node: str | None = None
    checkpoint: StoredJSON | None = None
    checkpoint_id: ClientId | None = None


class StateAt(Body):
    checkpoint: StoredJSON
    subgraphs: bool = False


class HistoryQuery(Body):
    limit: int = Field(10, ge=1, le=1000)
    before: StoredJSON | ClientId | None = None
    metadata: StoredJSON | None = None
    checkpoint: StoredJSON | None = None


class AssistantSearch(Body):
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None


class LangGraphError(BaseModel):
    """The body of every error a LangGraph API handler answers (``http.error_json``):
    LangGraph's ``detail``, which its SDKs print, with our ``code`` beside it."""

    detail: str
    code: str
    errors: list[dict[str, Any]] | None = Field(None, description="422 only.")
