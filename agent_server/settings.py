"""One settings object for the whole server.

Sources, highest precedence first: explicit arguments (the CLI's flags), environment
variables prefixed ``AGENT_SERVER_``, a ``.env`` file, ``agent_server.toml`` and finally
the ``"graphs"`` map of a ``langgraph.json``, so a project that runs under
``langgraph dev`` works unchanged. Dict fields are merged across sources by
pydantic-settings, which is exactly the rule for graphs: a CLI ``--graph`` adds to the
graphs from files, and the same name overrides.

Nothing else in the package reads ``os.environ``: the settings object is passed down.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

TOML_FILE = "agent_server.toml"
LANGGRAPH_JSON = "langgraph.json"


class LangGraphJsonSource(PydanticBaseSettingsSource):
    """Reads only the ``graphs`` map of ``langgraph.json``; its other keys are not ours."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{self.path}: invalid JSON: {exc}") from exc
        graphs = data.get("graphs") if isinstance(data, dict) else None
        if not isinstance(graphs, dict):
            return {}
        # langgraph.json allows {"path": ..., "description": ...} objects besides strings.
        refs = {
            name: ref["path"] if isinstance(ref, dict) and "path" in ref else ref
            for name, ref in graphs.items()
        }
        return {"graphs": refs}


def parse_graph_specs(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["NAME=REF", ...]`` to a mapping; pass a mapping to Settings so it merges with files."""
    parsed: dict[str, str] = {}
    for item in specs:
        name, sep, ref = str(item).partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise ValueError(f"invalid graph {item!r}: expected NAME=REF")
        parsed[name.strip()] = ref.strip()
    return parsed


class Settings(BaseSettings):
    """Server configuration (environment variables use the ``AGENT_SERVER_`` prefix)."""

    model_config = SettingsConfigDict(
        env_prefix="AGENT_SERVER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        toml_file=TOML_FILE,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"

    graphs: dict[str, str] = Field(
        default_factory=dict, description="Graph name -> 'path/file.py:attr' or 'pkg.mod:attr'."
    )
    tools_dir: Path = Field(Path("tools"), description="Directory scanned for tool plugins.")
    tools_entry_point_group: str = "agent_server.tools"

    model: str = Field("scripted", description="'scripted' (offline) or 'openai:<model>'.")
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AGENT_SERVER_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("AGENT_SERVER_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )

    database_url: str = Field(
        ".agent-server/threads.sqlite",
        description="Threads: a SQLite file path, 'postgresql://...', or 'memory://'.",
    )
    database_pool_size: int = Field(10, ge=1, description="PostgreSQL connections per worker.")
    broker_url: str = Field(
        "memory://",
        description="How workers share runs: 'memory://' (one process) or 'redis://host:port/db'.",
    )
    broker_prefix: str = Field("agent-server", description="Namespace of the broker's keys.")

    ping_interval: float = Field(15.0, gt=0, description="Seconds between SSE keep-alive pings.")
    flush_interval: float = Field(
        0.002,
        ge=0,
        le=1,
        description="Seconds a lone stream waits after a write so that a burst of frames "
        "shares the next write; the wait grows with concurrent streams up to "
        "flush_interval_max (see agent_server/pacing.py). 0 writes every frame at once.",
    )
    flush_interval_max: float = Field(0.05, ge=0, le=1)
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest accepted request body.")

    # Runs (docs/configuration.md, "Runs and limits").
    max_concurrent_runs: int = Field(32, ge=1, description="Runs executing at once.")
    max_queued_runs: int = Field(1000, ge=0, description="Runs waiting for a slot; 429 past it.")
    run_timeout: float = Field(600.0, gt=0, description="Default run timeout, seconds.")
    tool_timeout: float = Field(120.0, gt=0, description="Timeout of one tool call, seconds.")
    event_source: Literal["callbacks", "events"] = Field(
        "callbacks",
        description="How runs learn what a graph does: 'callbacks' (an inline callback "
        "handler plus stream modes, the fast default) or 'events' (astream_events v2, the "
        "reference the frames are defined by). Both give the same frames.",
    )
    retention_seconds: float = Field(600.0, ge=0, description="Finished runs' logs are kept...")
    retention_runs: int = Field(1000, ge=0, description="...and at most this many of them.")
    retention_bytes: int = Field(
        256 * 2**20,
        ge=0,
        description="...and at most this many bytes of them (compressed); the oldest go first.",
    )
    subscriber_max_lag: int = Field(
        10_000, ge=1, description="Frames a subscriber may fall behind before it is dropped."
    )
    send_timeout: float = Field(
        10.0, gt=0, description="A send blocked this long drops its client."
    )
    sse_retry_ms: int = Field(1000, ge=0, description="The reconnect delay sent as SSE 'retry:'.")
    reconnect_grace: float = Field(
        5.0,
        ge=0,
        description="On GET /runs/stream, on_disconnect=cancel waits this long for the "
        "EventSource to come back before cancelling.",
    )
    shutdown_grace: float = Field(
        10.0, ge=0, description="On SIGTERM, seconds running runs get to finish."
    )

    # Outages of the shared services (docs/reliability.md).
    broker_wait: float = Field(
        10.0,
        gt=0,
        description="Seconds a stream of another worker's run waits for an unreachable "
        "broker before it ends with error broker_unavailable (the client resumes).",
    )
    storage_wait: float = Field(
        15.0,
        gt=0,
        description="Seconds a checkpoint or record call retries while PostgreSQL is "
        "unreachable, or waits while it hangs, before the run fails with storage_unavailable.",
    )
    log_json: bool = Field(False, description="Write logs as one JSON object per line.")

    # Authentication (docs/auth.md).
    auth: str = Field(
        "none", description="'none', 'api_keys', 'jwt', or 'module:function' (async verifier)."
    )
    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description="For auth=api_keys: user id -> key."
    )
    jwt_key: SecretStr | None = Field(
        None, description="For auth=jwt: the HS256 secret or the RS256 public key (PEM)."
    )
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    # Browsers on other origins (docs/frontends.md, "CORS").
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API and open the WebSocket ('*' for any). "
        "The server's own origin is always allowed.",
    )

    # LangGraph's HTTP API for its SDKs (docs/langgraph-api.md).
    langgraph_api_prefix: str = Field(
        "/langgraph",
        pattern=r"^(/[A-Za-z0-9._~-]+)+$",
        description="Where the LangGraph API is served; its clients use this as their URL.",
    )

    # The LangGraph API's store, assistants and thread TTL (issue 18; docs/langgraph-api.md,
    # "Store" and "Threads").
    store_embeddings: str = Field(
        "hashing",
        description="Semantic search in the store: 'hashing' (offline and deterministic: "
        "words hashed into a vector, for tests and demos), 'openai:<model>' (with the OpenAI "
        "key and base URL above), or 'none' (no index: a search's query is ignored).",
    )
    store_embedding_dims: int | None = Field(
        None,
        ge=1,
        le=16_000,
        description="The embeddings' size: known for 'hashing' (256) and OpenAI's "
        "text-embedding-3-small/-large and ada-002; required for other models.",
    )
    store_index_fields: list[str] = Field(
        default_factory=lambda: ["$"],
        description="The fields of an item that are embedded ('$': the whole value).",
    )
    store_ttl_minutes: float | None = Field(
        None, gt=0, description="Default lifetime of a store item (none: until deleted)."
    )
    store_ttl_refresh_on_read: bool = Field(
        True, description="Reading an item with a TTL restarts its lifetime."
    )
    thread_ttl_minutes: float | None = Field(
        None,
        gt=0,
        description="Default TTL of threads created through the LangGraph API (none: kept "
        "until deleted); a thread expires this long after its last update.",
    )
    ttl_sweep_interval: float = Field(
        60.0, gt=0, description="Seconds between sweeps of expired store items and threads."
    )

    # The LangGraph API's crons and webhooks (issue 18; docs/langgraph-api.md, "Crons"
    # and "Webhooks").
    cron_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds between a worker's looks for due crons."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhooks reach loopback, private and link-local addresses "
        "(cloud metadata endpoints stay refused unless named in webhook_allowed_hosts).",
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="If set, the only hosts webhooks may go to ('*.example.com' for any "
        "subdomain); a host named here is not checked against the address rules.",
    )
    webhook_https_only: bool = Field(False, description="Refuse webhooks that are not https.")
    webhook_attempts: int = Field(
        3, ge=1, le=10, description="Tries of a delivery that failed with 5xx, 429 or no answer."
    )
    webhook_timeout: float = Field(10.0, gt=0, le=300, description="Seconds one try may take.")

    # WebSocket sessions (docs/protocol.md, "WebSocket").
    ws_ping_interval: float = Field(20.0, gt=0, description="Seconds between app-level pings.")
    ws_idle_timeout: float = Field(
        60.0, gt=0, description="A socket silent this long (no message, no pong) is closed."
    )
    ws_max_message_bytes: int = Field(1_000_000, gt=0, description="Larger messages: close 1009.")
    ws_rate_limit: float = Field(20.0, gt=0, description="Client messages per second, sustained.")
    ws_rate_burst: int = Field(60, ge=1, description="Client messages allowed in a burst.")
    presence_members_max: int = Field(
        100,
        ge=0,
        description="Rooms up to this size list their members in every presence message; "
        "in larger ones only a joiner's own join does.",
    )

    # Slow clients and connections, per worker (docs/configuration.md, "Connections").
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a request's headers may take to arrive; 408 past it."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request's body may take to arrive; 408 past it."
    )
    max_connections: int = Field(
        10_000, ge=1, description="Open connections per worker; later ones get 503."
    )

    # MCP servers whose tools the graphs use (docs/mcp.md, "Tools from MCP servers").
    mcp_config: Path | None = Field(
        None,
        description="An mcp.json file: {'mcpServers': {name: {command, args, env, cwd} "
        "(stdio) or {url, headers} (Streamable HTTP)}}.",
    )
    mcp_servers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The same entries as [mcp_servers.<name>] tables in agent_server.toml.",
    )
    mcp_connect_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds each MCP server gets to start and list its tools (at start-up, "
        "all at once; and for each restart). One that takes longer is skipped.",
    )

    @field_validator("graphs", mode="before")
    @classmethod
    def _parse_graph_list(cls, value: Any) -> Any:
        """Accept ``NAME=REF`` strings (CLI flags, env) besides a mapping."""
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return parse_graph_specs(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        try:
            toml_settings = TomlConfigSettingsSource(settings_cls)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message has the line and column but not the file.
            raise ValueError(f"{TOML_FILE}: invalid TOML: {exc}") from exc
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            toml_settings,
            LangGraphJsonSource(settings_cls, Path(LANGGRAPH_JSON)),
        )

    @property
    def checkpoint_in_memory(self) -> bool:
        return self.database_url in {"memory://", ":memory:"}
