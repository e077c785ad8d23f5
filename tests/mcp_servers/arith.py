"""An MCP server written for the tests with the ``mcp`` package's FastMCP.

Its tools: ``add`` (a plain result), ``count`` (reports progress and sends log messages
while it runs), ``fail`` (an MCP error result), ``pid`` (its process id, for the restart
and orphan tests), ``sleep`` (for the tool timeout).

Run as ``python arith.py`` it serves stdio; ``build()`` gives the FastMCP object, whose
``streamable_http_app()`` the tests serve over Streamable HTTP. With ``ARITH_REFUSE_IF``
naming a file that exists, it exits at once (a server that cannot be restarted).
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP


def build() -> FastMCP:
    server = FastMCP("arith", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    async def count(ctx: Context, steps: int = 3, delay: float = 0.0) -> str:  # type: ignore[type-arg]
        """Count to ``steps``, reporting progress after each step."""
        await ctx.info(f"counting to {steps}")
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)
            await ctx.report_progress(step, steps, message=f"step {step} of {steps}")
        return f"counted to {steps}"

    @server.tool()
    def fail(reason: str = "it went wrong") -> str:
        """Always fail, with ``reason``."""
        raise ValueError(reason)

    @server.tool()
    def pid() -> int:
        """This server's process id."""
        return os.getpid()

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep for ``seconds``."""
        await asyncio.sleep(seconds)
        return f"slept {seconds:g} s"

    return server


if __name__ == "__main__":
    refuse = os.environ.get("ARITH_REFUSE_IF")
    if refuse and os.path.exists(refuse):
        sys.exit(f"arith: refusing to start ({refuse} exists)")
    build().run("stdio")
