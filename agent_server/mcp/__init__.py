"""MCP both ways: tools from MCP servers (:mod:`.client`), and every graph as an MCP
tool at ``/mcp`` (:mod:`.server`). See docs/mcp.md."""

from agent_server.mcp.client import MCPServer, connect_servers
from agent_server.mcp.config import ServerSpec, load_specs

__all__ = ["MCPServer", "ServerSpec", "connect_servers", "load_specs"]
