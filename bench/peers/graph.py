"""The benchmark graph for the peers' own venvs (Aegra, ``langgraph dev``).

The peers must run the very same graph as agent-server, so this file imports
``bench/bench_graph.py`` rather than rebuilding it. That graph needs only a few
``agent_server`` modules (the scripted model, the tool registry, settings), while
``agent_server/__init__.py`` imports the whole server and its dependencies: Aegra's venv
has none of them, and ``.venv-langgraph`` has those of the day it was built. So the
package is registered bare (its ``__path__`` only, ``__init__`` not run) and its
submodules import as usual. ``PYTHONPATH`` must hold the repository root.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

if "agent_server" not in sys.modules:
    package = types.ModuleType("agent_server")
    package.__path__ = [str(ROOT / "agent_server")]
    sys.modules["agent_server"] = package

from bench.bench_graph import graph  # noqa: E402

__all__ = ["graph"]
