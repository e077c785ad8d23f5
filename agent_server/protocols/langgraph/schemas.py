"""Request bodies of the LangGraph API, as its SDKs send them, and its error body.

Unknown fields are ignored rather than refused: the SDKs send every field they know,
including ones this server does not act on (``feedback_keys``...), and
``docs/langgraph-api.md`` lists those. Known fields are validated strictly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, field_validator

from agent_server.crons import CronSortBy
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
    webhook: str | None = Field(None, max_length=4096, description="Told of the run's end.")
    after_seconds: float | None = Field(
        None, ge=0, le=31_622_400, description="Seconds the run stays pending first."
    )

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


class ThreadTTL(Body):
    ttl: float = Field(ge=1e-4, le=1e9, description="Minutes after the thread's last update.")
    strategy: Literal["delete", "keep_latest"] = "delete"


class ThreadCreate(Body):
    thread_id: ClientId | None = None
    metadata: StoredJSON | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    ttl: ThreadTTL | None = None


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
    ttl: ThreadTTL | None = None


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


# -- the store, assistant records, thread copies and prunes, batches (issue 18) ---------


def check_label(value: str) -> str:
    if not value or "." in value or "\x00" in value:
        raise ValueError("a namespace label is a non-empty string without '.' or NUL")
    return value


def check_key(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError("a key is a non-empty string without NUL")
    return value


def _filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Only the operators every store knows; anything else is a 422, not a store error."""

    def check(found: Any) -> None:
        if isinstance(found, dict):
            for key, item in found.items():
                if key.startswith("$") and key not in FILTER_OPERATORS:
                    raise ValueError(f"unknown filter operator {key!r}")
                check(item)

    check(value)
    return value


FILTER_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})
Label = Annotated[str, Field(max_length=256), AfterValidator(check_label)]
StoreKey = Annotated[str, Field(max_length=1024), AfterValidator(check_key)]
Namespace = Annotated[list[Label], Field(max_length=64)]


class StorePut(Body):
    namespace: Namespace = Field(min_length=1)
    key: StoreKey
    value: StoredJSON
    index: Literal[False] | list[str] | None = None
    ttl: float | None = Field(None, ge=1e-4, le=1e9, description="Minutes.")


class StoreDelete(Body):
    namespace: Namespace = Field(min_length=1)
    key: StoreKey


class StoreSearch(Body):
    namespace_prefix: Namespace = Field(default_factory=list)
    filter: Annotated[StoredJSON, AfterValidator(_filter)] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)
    query: str | None = Field(None, max_length=100_000)
    refresh_ttl: bool | None = None


class StoreNamespaces(Body):
    prefix: Namespace | None = None
    suffix: Namespace | None = None
    max_depth: int | None = Field(None, ge=1, le=64)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class AssistantConfig(BaseModel):
    """What LangGraph's server validates of an assistant's config; other keys are kept."""

    model_config = ConfigDict(extra="allow")

    configurable: StoredJSON | None = None
    tags: list[str] | None = None
    recursion_limit: int | None = Field(None, ge=1, le=10_000)


def _assistant_config(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        AssistantConfig.model_validate(value)
    return value


AssistantConfigJSON = Annotated[StoredJSON, AfterValidator(_assistant_config)]


class AssistantCreate(Body):
    graph_id: str = Field(min_length=1)
    assistant_id: ClientId | None = None
    config: AssistantConfigJSON | None = None
    context: StoredJSON | None = None
    metadata: StoredJSON | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    name: str | None = Field(None, max_length=1000)
    description: str | None = Field(None, max_length=10_000)

    @field_validator("if_exists", mode="before")
    @classmethod
    def _default_when_null(cls, value: Any) -> Any:
        return "raise" if value is None else value


class AssistantPatch(Body):
    graph_id: str | None = Field(None, min_length=1)
    config: AssistantConfigJSON | None = None
    context: StoredJSON | None = None
    metadata: StoredJSON | None = None
    name: str | None = Field(None, max_length=1000)
    description: str | None = Field(None, max_length=10_000)


class AssistantCount(Body):
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None


class AssistantVersions(Body):
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class AssistantLatest(Body):
    version: int = Field(ge=1, le=2**31 - 1)


class ThreadPrune(Body):
    thread_ids: list[ClientId] = Field(max_length=1000)
    strategy: Literal["delete", "keep_latest"] = "delete"


class RunBatch(RootModel[Annotated[list[RunCreate], Field(max_length=100)]]):
    """``POST /runs/batch``: stateless background runs, at most 100."""


# -- crons (issue 18; agent_server/crons.py) ------------------------------------------


class CronCreate(RunCreate):
    """``POST /runs/crons``, ``POST /threads/{id}/runs/crons``: the schedule, and the
    fields of a run, which each of its runs gets."""

    schedule: str = Field(min_length=1, max_length=256)
    timezone: str | None = Field(None, max_length=64)
    end_time: datetime | None = None
    enabled: bool = True
    on_run_completed: Literal["delete", "keep"] | None = None  # a stateless cron's threads


class CronPatch(Body):
    """``PATCH /runs/crons/{id}``: the schedule's fields, and run fields that replace the
    cron's (validated as a run's); an explicit ``end_time: null`` clears the end time."""

    schedule: str | None = Field(None, min_length=1, max_length=256)
    timezone: str | None = Field(None, max_length=64)
    end_time: datetime | None = None
    enabled: bool | None = None
    on_run_completed: Literal["delete", "keep"] | None = None
    metadata: StoredJSON | None = None  # merged into the cron's
    input: Any = None
    config: StoredJSON | None = None
    context: dict[str, Any] | None = None
    webhook: str | None = Field(None, max_length=4096)
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    stream_mode: StreamMode | list[StreamMode] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] | None = None


CronField = Literal[
    "cron_id", "assistant_id", "thread_id", "end_time", "schedule", "timezone",
    "created_at", "updated_at", "user_id", "payload", "next_run_date", "metadata",
    "on_run_completed", "enabled",
]  # fmt: skip


class CronCount(Body):
    assistant_id: str | None = None
    thread_id: ClientId | None = None
    metadata: StoredJSON | None = None


class CronSearch(CronCount):
    enabled: bool | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000_000)  # PostgreSQL's OFFSET is a bigint
    sort_by: CronSortBy | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[CronField] | None = None


class LangGraphError(BaseModel):
    """The body of every error a LangGraph API handler answers (``http.error_json``):
    LangGraph's ``detail``, which its SDKs print, with our ``code`` beside it."""

    detail: str
    code: str
    errors: list[dict[str, Any]] | None = Field(None, description="422 only.")
