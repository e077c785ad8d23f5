"""Import user code (graph and tool files) by path or by dotted name.

A file is imported as a real module registered in ``sys.modules`` under a stable name
derived from its path, as LangGraph's own loader does, so that pydantic models,
dataclasses and ``from __future__ import annotations`` inside it resolve their globals.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def module_name_for(path: Path) -> str:
    """A module name that is unique per absolute path and readable in tracebacks."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    stem = resolved.stem if resolved.name != "__init__.py" else resolved.parent.name
    return f"agent_server_user_{stem}_{digest}"


def import_path(path: Path) -> ModuleType:
    """Import ``path`` (a ``.py`` file or a package directory) and return the module.

    Re-importing the same path returns the module already in ``sys.modules``.
    """
    if path.is_dir():
        path = path / "__init__.py"
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = module_name_for(path)
    if name in sys.modules:
        return sys.modules[name]
    search = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_ref(ref: str, base_dir: Path | None = None) -> object:
    """Resolve ``path/to/file.py:attr`` or ``package.module:attr`` to the object it names."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(
            f"invalid reference {ref!r}: expected 'path/file.py:attr' or 'pkg.mod:attr'"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        module = import_path(path)
    else:
        module = importlib.import_module(target)
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{target!r} has no attribute {attr!r}") from None
    return obj
