"""Which MCP servers to connect to: ``mcp.json`` and ``[mcp_servers.<name>]`` tables.

The common format, as Claude Desktop, Cursor and VS Code write it::

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."]},
        "search": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}
    }}

``AGENT_SERVER_MCP_CONFIG`` names such a file; ``agent_server.toml`` may declare the same
entries as ``[mcp_servers.<name>]`` tables (``AGENT_SERVER_MCP_SERVERS`` as JSON).

Decisions:

- An entry with ``command`` is a stdio server (``args``, ``env``, ``cwd``); one with
  ``url`` is a Streamable HTTP server (``headers``). ``type`` / ``transport`` may say so
  explicitly (``stdio``, ``http``, ``streamable_http``, ``streamable-http``); the legacy
  SSE transport is refused by name rather than misread. ``"disabled": true`` (Cline's
  key) skips an entry quietly. Other keys that other clients write (``alwaysAllow``,
  ``autoApprove``, ...) are ignored, so one file serves several clients.
- A broken entry (neither ``command`` nor ``url``, wrong types) is reported and
  skipped: one typo never stops the server, as for tool and graph plugins. A file that
  cannot be read or is not JSON is reported the same way, and its servers are skipped.
- Both sources merge by name; for a name in both, the file named by
  ``AGENT_SERVER_MCP_CONFIG`` wins (it is the more specific choice) and the override is
  logged.
- ``${VAR}`` in ``env`` values is expanded from agent-server's environment by
  langchain-mcp-adapters; a stdio server otherwise gets the MCP SDK's short list of
  inherited variables (``PATH``, ``HOME``, ...), never the server's secrets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_server.tools import PluginError

__all__ = ["ServerSpec", "load_specs"]

logger = logging.getLogger("agent_server.mcp")

STDIO_NAMES = frozenset({"stdio"})
HTTP_NAMES = frozenset({"http", "streamable_http", "streamable-http", "streamableHttp"})


class _Entry(BaseModel):
    """One entry as written; unknown keys (other clients' settings) are ignored."""

    model_config = ConfigDict(extra="ignore")

    command: str | None = Field(None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = Field(None, pattern=r"^https?://")
    headers: dict[str, str] | None = None
    type: str | None = None
    transport: str | None = None
    disabled: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> _Entry:
        declared = self.transport or self.type
        if declared is not None and declared not in STDIO_NAMES | HTTP_NAMES:
            raise ValueError(
                f"transport {declared!r} is not supported (use stdio or Streamable HTTP)"
            )
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (stdio) or 'url' (Streamable HTTP)")
        if declared in STDIO_NAMES and self.command is None:
            raise ValueError("a stdio server needs 'command'")
        if declared in HTTP_NAMES and self.url is None:
            raise ValueError("a Streamable HTTP server needs 'url'")
        return self


@dataclass(frozen=True)
class ServerSpec:
    """A configured MCP server, checked; ``source`` says where it was declared."""

    name: str
    source: str
    transport: Literal["stdio", "streamable_http"]
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str = ""
    headers: dict[str, str] | None = None

    def describe(self) -> str:
        if self.transport == "stdio":
            return " ".join([self.command, *self.args])
        return self.url


def _spec(name: str, raw: Any, source: str) -> ServerSpec | None:
    """The checked spec of one entry; None when it is disabled. Raises ValueError."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    try:
        entry = _Entry.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors(include_url=False)
        )
        raise ValueError(problems) from None
    if entry.disabled:
        logger.info("MCP server %r (%s) is disabled", name, source)
        return None
    if entry.command is not None:
        return ServerSpec(
            name=name,
            source=source,
            transport="stdio",
            command=entry.command,
            args=entry.args,
            env=entry.env,
            cwd=entry.cwd,
        )
    assert entry.url is not None
    return ServerSpec(
        name=name, source=source, transport="streamable_http", url=entry.url, headers=entry.headers
    )


def _read_file(path: Path, errors: list[PluginError]) -> dict[str, Any]:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        errors.append(PluginError(source, f"{type(exc).__name__}: {exc}"))
        return {}
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        errors.append(PluginError(source, 'expected {"mcpServers": {"<name>": {...}}}'))
        return {}
    return servers


def load_specs(
    config_file: Path | None, tables: Mapping[str, Any]
) -> tuple[list[ServerSpec], list[PluginError]]:
    """The servers of ``config_file`` (``mcp.json``) and of ``tables`` (the TOML tables),
    in declaration order, tables first; and the entries that were skipped, with why."""
    errors: list[PluginError] = []
    raw: dict[str, tuple[Any, str]] = {
        name: (entry, f"agent_server.toml [mcp_servers.{name}]") for name, entry in tables.items()
    }
    if config_file is not None:
        for name, entry in _read_file(Path(config_file), errors).items():
            if name in raw:
                logger.info("MCP server %r from %s overrides %s", name, config_file, raw[name][1])
            raw[name] = (entry, f"{config_file} [{name}]")
    specs: list[ServerSpec] = []
    for name, (entry, source) in raw.items():
        try:
            spec = _spec(name, entry, source)
        except ValueError as exc:
            errors.append(PluginError(source, str(exc)))
            continue
        if spec is not None:
            specs.append(spec)
    return specs, errors
