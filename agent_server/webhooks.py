"""Webhooks: one ``POST`` of a finished run to the URL its creator named, and the guard
that keeps such URLs off the server's own network (SSRF).

Decisions (read before changing):

- A URL is checked twice: when the run (or cron) is created, where a refusal is a 422
  and nothing is created, and again before every try of the delivery, because what a
  name resolves to can change in between (DNS rebinding). A try then connects to the
  very address it just checked (the request is pinned to it; the ``Host`` header and the
  TLS server name stay the URL's host), so no second lookup can swap it.
- Refused by default: names and addresses that are loopback, private (RFC 1918, the
  shared 100.64.0.0/10, IPv6 unique-local), link-local, unspecified, multicast or
  reserved, IPv4 addresses hidden in IPv6 ones included (mapped, 6to4, NAT64), the names
  ``localhost`` and ``*.localhost``, Kubernetes' ``*.svc.cluster.local``, and cloud
  metadata endpoints (169.254.169.254, ``metadata.google.internal``...).
  ``AGENT_SERVER_WEBHOOK_ALLOW_PRIVATE=1`` lifts the loopback, private and link-local
  rules (a receiver on the same network), **not** the metadata one: no webhook has a
  reason to post a run to a cloud's credentials service. A host in
  ``AGENT_SERVER_WEBHOOK_ALLOWED_HOSTS`` (exact, or ``*.example.com``) is trusted as named,
  neither its name nor its addresses checked, as LangGraph's ``allowed_domains`` are;
  once that list is set, no other host is allowed. ``AGENT_SERVER_WEBHOOK_HTTPS_ONLY=1``
  refuses plain ``http``.
- Redirects are not followed (a 3xx is the answer, logged): following one would need
  every check again, and a receiver has no reason to redirect a POST. Proxies from the
  environment are not used either: a proxy would resolve the name itself.
- Delivery never holds a run or its stream: it is a task of its own, started once the
  run has ended; its failures are logged, never raised. At most ``attempts`` tries, a
  retry only after a 5xx, a 429 or no answer (refused, reset, timed out), after an
  exponential back-off with full jitter (a ``Retry-After`` of up to a minute is
  honoured). Every try sends the same bytes and the same ``Idempotency-Key`` (the run
  id), so a receiver that got an earlier try can drop the later one.
- Deliveries are not durable: a worker that stops waits ``CLOSE_GRACE`` seconds for those
  under way, then drops them (logged). A run is told of at most once per its end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from agent_server.supervise import backoff

if TYPE_CHECKING:
    from agent_server.settings import Settings

logger = logging.getLogger("agent_server.webhooks")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 4096
RESOLVE_TIMEOUT = 5.0
MAX_RETRY_AFTER = 60.0
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.amazonaws.com", "metadata", "instance-data"}
)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "host.docker.internal"})
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookRefused(ValueError):
    """A webhook URL the policy refuses; the message says why."""


@dataclass(frozen=True)
class WebhookPolicy:
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    https_only: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            allow_private=settings.webhook_allow_private,
            allowed_hosts=tuple(h.strip().lower() for h in settings.webhook_allowed_hosts),
            https_only=settings.webhook_https_only,
        )

    def listed(self, host: str) -> bool:
        return any(
            host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
            for allowed in self.allowed_hosts
        )


def _embedded(address: Address) -> list[Address]:
    """An IPv4 address carried inside an IPv6 one (what the packets reach), then the
    address itself."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in NAT64:
            inner = ipaddress.IPv4Address(address.packed[-4:])
        if inner is not None:
            found.insert(0, inner)
    return found


def address_refusal(address: Address, policy: WebhookPolicy) -> str | None:
    """Why ``address`` may not receive webhooks, or None."""
    for each in _embedded(address):
        if each in METADATA_ADDRESSES:
            return "a cloud metadata endpoint"
        if each.is_unspecified or each.is_multicast:
            return "a reserved address"
        if each.is_loopback:
            kind = "a loopback address"
        elif each.is_link_local:
            kind = "a link-local address"
        elif each.is_private or each in SHARED_ADDRESS_SPACE:
            kind = "a private address"
        elif each.is_reserved or not each.is_global:
            return "a reserved address"
        else:
            continue
        if not policy.allow_private:
            return kind
    return None


async def check_url(url: str, policy: WebhookPolicy) -> list[str]:
    """The addresses ``url`` may be delivered to (none to pin: an allow-listed host);
    raises :class:`WebhookRefused`. Resolves the host name (at most ``RESOLVE_TIMEOUT``
    seconds) and checks every address it has: one refused address refuses the URL."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or (policy.https_only and scheme != "https"):
        raise WebhookRefused("the URL must be https" if policy.https_only else "not an http(s) URL")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise WebhookRefused("the URL has no host")
    if policy.listed(host):
        return []
    if policy.allowed_hosts:
        raise WebhookRefused(f"{host} is not an allowed webhook host")
    if host in METADATA_NAMES:
        raise WebhookRefused(f"{host} is a cloud metadata endpoint")
    if not policy.allow_private:
        if host in LOOPBACK_NAMES or host.endswith(".localhost"):
            raise WebhookRefused(f"{host} is a loopback address")
        if host.endswith(".svc.cluster.local"):
            raise WebhookRefused(f"{host} is a private address")
    try:
        addresses: list[Address] = [ipaddress.ip_address(host)]
        verb = "is"
    except ValueError:
        addresses = await _resolve(host, port or (443 if scheme == "https" else 80))
        verb = "resolves to"
    for address in addresses:
        refusal = address_refusal(address, policy)
        if refusal is not None:
            raise WebhookRefused(f"{host} {verb} {refusal} ({address})")
    return [str(address) for address in addresses]


async def _resolve(host: str, port: int) -> list[Address]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise WebhookRefused(f"{host} does not resolve ({exc or type(exc).__name__})") from None
    addresses: list[Address] = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # no IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise WebhookRefused(f"{host} does not resolve")
    return addresses


def retryable(status: int) -> bool:
    return status >= 500 or status == 429


class Webhooks:
    """Delivers webhooks for one worker (see the module docstring)."""

    CLOSE_GRACE = 5.0

    def __init__(
        self,
        policy: WebhookPolicy | None = None,
        *,
        attempts: int = 3,
        timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
    ) -> None:
        self.policy = policy or WebhookPolicy()
        self.attempts = attempts
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Webhooks:
        return cls(
            WebhookPolicy.from_settings(settings),
            attempts=settings.webhook_attempts,
            timeout=settings.webhook_timeout,
        )

    async def check(self, url: str) -> None:
        """Raise :class:`WebhookRefused` unless the policy lets ``url`` receive webhooks."""
        await check_url(url, self.policy)

    def send(self, url: str, key: str, body: Callable[[], bytes]) -> None:
        """Deliver ``body()`` to ``url`` in the background; ``key`` is its idempotency key."""
        task = asyncio.create_task(self._send(url, key, body), name=f"webhook-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, key: str, body: Callable[[], bytes]) -> None:
        try:
            await self.deliver(url, key, body())
        except Exception:
            logger.exception("webhook of %s: could not deliver it to %s", key, url)

    async def deliver(self, url: str, key: str, content: bytes) -> bool:
        """Post ``content`` until a try is answered, or tries run out; True if a 2xx."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False
            )
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "User-Agent": "agent-server-webhook",
        }
        for attempt in range(1, self.attempts + 1):
            wait = backoff(attempt, self.backoff_base, self.backoff_cap)
            try:
                addresses = await check_url(url, self.policy)  # again: DNS may have changed
            except WebhookRefused as exc:
                logger.warning("webhook of %s not sent: %s", key, exc)
                return False
            request = self._client.build_request("POST", url, content=content, headers=headers)
            if addresses:  # connect to the address just checked, as the URL's host
                request.extensions["sni_hostname"] = request.url.host
                request.url = request.url.copy_with(host=addresses[0])
            try:
                response = await self._client.send(request)
                await response.aclose()
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if not retryable(response.status_code):
                    ok = response.is_success
                    log = logger.info if ok else logger.warning
                    log("webhook of %s: %s answered %d", key, url, response.status_code)
                    return ok
                problem = f"status {response.status_code}"
                after = response.headers.get("Retry-After", "")
                if after.isdigit():
                    wait = max(wait, min(float(after), MAX_RETRY_AFTER))
            if attempt == self.attempts:
                logger.warning("webhook of %s: %s failed %d times (%s)", key, url, attempt, problem)
                return False
            logger.info("webhook of %s: %s failed (%s); retrying", key, url, problem)
            await asyncio.sleep(wait)
        return False

    async def close(self) -> None:
        """Give deliveries under way ``CLOSE_GRACE`` seconds, then drop the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.CLOSE_GRACE)
            for task in pending:
                logger.warning("dropping webhook %s at shutdown", task.get_name())
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
