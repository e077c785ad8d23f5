"""Authentication: who is calling. Authorisation (who may touch which thread) is in runs.

A *verifier* turns a token into a :class:`User` or ``None``. The settings choose one
(``AGENT_SERVER_AUTH``): ``none`` (the default, for local use), ``api_keys`` (static keys,
each naming its user), ``jwt`` (HS256 or RS256 through PyJWT), or ``module:function``
naming your own ``async def verify(token: str) -> User | None``.

Where the token comes from:

- HTTP and SSE: ``Authorization: Bearer <token>``, or ``X-Api-Key: <token>`` (what
  LangGraph's SDKs send when given an ``api_key``).
- WebSocket: the same header, or the ``token`` query parameter (browsers cannot set
  headers on a WebSocket; it is removed from the scope before anything logs it), or a
  ``Sec-WebSocket-Protocol`` entry ``bearer.<token>`` offered next to
  ``agent-server.v1`` (the server answers with ``agent-server.v1``).

A failed HTTP request gets 401 with a JSON body. A failed WebSocket is *accepted and
then closed* with 1008 and a reason: closing before accepting reaches the browser as a
bare HTTP 403 that a page cannot read. :class:`AuthMiddleware` only records the outcome
in the scope; the WebSocket endpoint does the accept-then-close.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_server._importer import import_ref
from agent_server.frames import dumps
from agent_server.settings import Settings

logger = logging.getLogger("agent_server.auth")

SUBPROTOCOL = "agent-server.v1"
BEARER_PROTOCOL_PREFIX = "bearer."
# Routes that answer without a token: probes and scrapers, and what holds no data: the
# playground page (a browser sends no header when it navigates; the page then asks for
# the token and sends it itself) and the OpenAPI document.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/", "/openapi.json"})


@dataclass(frozen=True)
class User:
    id: str
    claims: dict[str, Any] = field(default_factory=dict)


Verifier = Callable[[str], Awaitable[User | None]]


def api_key_verifier(keys: dict[str, str]) -> Verifier:
    """Static keys: ``{key: user_id}`` (settings hold ``{user_id: key}``, keys secret)."""

    async def verify(token: str) -> User | None:
        user_id = keys.get(token)
        return User(user_id) if user_id is not None else None

    return verify


def jwt_verifier(
    key: str,
    *,
    algorithms: list[str],
    audience: str | None = None,
    issuer: str | None = None,
    user_claim: str = "sub",
) -> Verifier:
    """HS256 (shared secret) or RS256 (public key, PEM) tokens; ``exp`` is enforced."""

    async def verify(token: str) -> User | None:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                issuer=issuer,
                options={"require": ["exp", user_claim]},
            )
        except jwt.PyJWTError as exc:
            logger.info("rejected a JWT: %s", exc)
            return None
        return User(str(claims[user_claim]), claims)

    return verify


def load_verifier(settings: Settings) -> Verifier | None:
    """The configured verifier, or ``None`` when authentication is off."""
    mode = settings.auth
    if mode == "none":
        if not _is_loopback(settings.host):
            logger.warning(
                "AUTHENTICATION IS OFF and the server listens on %s: anyone who can reach "
                "it can run your agents. Set AGENT_SERVER_AUTH (api_keys, jwt or "
                "module:function).",
                settings.host,
            )
        return None
    if mode == "api_keys":
        if not settings.api_keys:
            raise ValueError("AGENT_SERVER_AUTH=api_keys needs AGENT_SERVER_API_KEYS")
        return api_key_verifier(
            {key.get_secret_value(): user for user, key in settings.api_keys.items()}
        )
    if mode == "jwt":
        key = settings.jwt_key.get_secret_value() if settings.jwt_key else None
        if not key:
            raise ValueError("AGENT_SERVER_AUTH=jwt needs AGENT_SERVER_JWT_KEY")
        return jwt_verifier(
            key,
            algorithms=settings.jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    target = import_ref(mode)
    if not callable(target) or not inspect.iscoroutinefunction(target):
        raise ValueError(f"AGENT_SERVER_AUTH={mode!r} must name an async function token -> user")
    return _adapt(target)


def _adapt(function: Callable[[str], Awaitable[Any]]) -> Verifier:
    """Let a user's verifier return our User, a string id, a dict with ``id``, or None."""

    async def verify(token: str) -> User | None:
        result = await function(token)
        if result is None or isinstance(result, User):
            return result
        if isinstance(result, str):
            return User(result)
        if isinstance(result, dict) and "id" in result:
            return User(str(result["id"]), dict(result))
        raise TypeError(f"verifier returned {type(result).__name__}, not a user")

    return verify


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_from_scope(scope: Scope) -> tuple[str | None, str | None]:
    """The bearer token and, when it came as a subprotocol, the protocol to answer with."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip(), None
    if api_key := headers.get("x-api-key", "").strip():  # how LangGraph's SDKs send a key
        return api_key, None
    if scope["type"] == "websocket":
        from urllib.parse import parse_qs

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], None
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        for protocol in offered:
            if protocol.startswith(BEARER_PROTOCOL_PREFIX):
                return protocol[len(BEARER_PROTOCOL_PREFIX) :], SUBPROTOCOL
    return None, None


class AuthMiddleware:
    """Puts the caller in ``scope["user"]`` (``None`` when auth is off); 401 on HTTP."""

    def __init__(self, app: ASGIApp, verifier: Verifier | None) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope["user"] = None
        scope["auth_error"] = None
        if self.verifier is not None and _path(scope) not in OPEN_PATHS:
            token, _ = token_from_scope(scope)
            _strip_token_from_query(scope)
            try:
                user = await self.verifier(token) if token else None
            except Exception:
                logger.exception("the verifier failed")
                user = None
            if user is None:
                reason = "missing bearer token" if not token else "invalid token"
                if scope["type"] == "http":
                    await _unauthorized(send, reason)
                    return
                scope["auth_error"] = reason  # the endpoint accepts, then closes 1008
            scope["user"] = user
        await self.app(scope, receive, send)


def _strip_token_from_query(scope: Scope) -> None:
    """uvicorn's access log prints the query string: never with the token in it."""
    from urllib.parse import parse_qsl, urlencode

    raw: bytes = scope.get("query_string", b"")
    if b"token=" not in raw:
        return
    pairs = [(k, v) for k, v in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)]
    scope["query_string"] = urlencode([(k, v) for k, v in pairs if k != "token"]).encode()


def _path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _unauthorized(send: Send, reason: str) -> None:
    body = dumps({"code": "unauthorized", "message": reason})
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="agent-server"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def user_id(scope: Scope) -> str | None:
    user = scope.get("user")
    return user.id if isinstance(user, User) else None
