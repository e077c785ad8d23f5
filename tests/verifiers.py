"""A custom verifier, referenced as ``tests.verifiers:verify`` by the auth tests."""

from __future__ import annotations


async def verify(token: str) -> dict[str, str] | None:
    """Tokens look like ``user:<name>``."""
    if token.startswith("user:"):
        return {"id": token.removeprefix("user:"), "source": "custom"}
    return None
