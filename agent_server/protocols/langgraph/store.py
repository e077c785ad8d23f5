"""The store routes (``/store/items``, ``/store/items/search``, ``/store/namespaces``) over
the server's store, the one every graph has (:mod:`agent_server.stores`).

With auth on, a user's namespaces are the ones whose first label is their user id, as
LangGraph's documented store authorisation has it: a put, get or delete elsewhere is a
403, and a search or listing without a prefix is scoped to ``(user id,)``. A graph
reaches the same items with the run's user (``config["metadata"]["user_id"]``).
"""

from __future__ import annotations

from typing import Any

from langgraph.store.base import InvalidNamespaceError
from starlette.requests import Request
from starlette.responses import Response

from agent_server.auth import user_id
from agent_server.protocols.langgraph.http import APIError, endpoint, json_response, parse
from agent_server.protocols.langgraph.schemas import (
    StoreDelete,
    StoreNamespaces,
    StorePut,
    StoreSearch,
    check_key,
    check_label,
)
from agent_server.runs import Forbidden
from agent_server.state import AppState


def owned(request: Request, namespace: list[str] | None) -> tuple[str, ...] | None:
    """``namespace`` if the caller may use it (a prefix: ``None`` is the caller's own)."""
    user = user_id(request.scope)
    if user is None:
        return None if namespace is None else tuple(namespace)
    if not namespace:
        return (user,)
    if namespace[0] != user:
        raise Forbidden(f"the store namespaces of this user start with {user!r}")
    return tuple(namespace)


def _refused(exc: ValueError) -> APIError:
    return APIError(422, str(exc) or "invalid store request", "validation_error")


@endpoint
async def put_item(request: Request, state: AppState) -> Response:
    body = await parse(request, state, StorePut)
    namespace = owned(request, body.namespace) or ()
    try:
        await state.store.aput(
            namespace,
            body.key,
            body.value,
            index=body.index,
            ttl=body.ttl if body.ttl is not None else state.settings.store_ttl_minutes,
        )
    except InvalidNamespaceError as exc:
        raise _refused(exc) from None
    return Response(status_code=204)


@endpoint
async def get_item(request: Request, state: AppState) -> Response:
    params = request.query_params
    try:
        labels = [check_label(label) for label in params.get("namespace", "").split(".")]
        key = check_key(params.get("key", ""))
    except ValueError as exc:
        raise _refused(exc) from None
    refresh = params.get("refresh_ttl")
    try:
        item = await state.store.aget(
            owned(request, labels) or (),
            key,
            refresh_ttl=None if refresh is None else refresh.lower() == "true",
        )
    except InvalidNamespaceError as exc:
        raise _refused(exc) from None
    return json_response(None if item is None else item.dict())


@endpoint
async def delete_item(request: Request, state: AppState) -> Response:
    body = await parse(request, state, StoreDelete)
    try:
        await state.store.adelete(owned(request, body.namespace) or (), body.key)
    except InvalidNamespaceError as exc:
        raise _refused(exc) from None
    return Response(status_code=204)


@endpoint
async def search_items(request: Request, state: AppState) -> Response:
    body = await parse(request, state, StoreSearch)
    prefix = owned(request, body.namespace_prefix) or ()
    try:
        items = await state.store.asearch(
            prefix,
            query=body.query or None,
            filter=body.filter,
            limit=body.limit,
            offset=body.offset,
            refresh_ttl=body.refresh_ttl,
        )
    except (ValueError, TypeError) as exc:  # a filter comparing a number with text...
        raise _refused(ValueError(f"invalid search: {exc}")) from None
    return json_response({"items": [item.dict() for item in items]})


@endpoint
async def list_namespaces(request: Request, state: AppState) -> Response:
    body = await parse(request, state, StoreNamespaces)
    try:
        found = await state.store.alist_namespaces(
            prefix=owned(request, body.prefix),
            suffix=tuple(body.suffix) if body.suffix else None,
            max_depth=body.max_depth,
            limit=body.limit,
            offset=body.offset,
        )
    except InvalidNamespaceError as exc:
        raise _refused(exc) from None
    namespaces: list[Any] = [list(namespace) for namespace in found]
    return json_response({"namespaces": namespaces})
