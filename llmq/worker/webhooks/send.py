"""One delivery attempt: the URL checked (http or https, and every address it resolves to a
public one, unless LLMQ_WEBHOOKS_ALLOW_PRIVATE), the body signed by Standard Webhooks
(``standardwebhooks``, as OpenAI's SDK verifies), and a POST to the address that was checked,
so a name cannot resolve to one address for the check and another for the send. Redirects
are not followed, the answer's body is read up to ``MAX_ANSWER_BYTES`` and the whole attempt
bounded by LLMQ_WEBHOOK_TIMEOUT: a receiver that is slow, huge or elsewhere costs one sender
that long, never the others."""

from __future__ import annotations

import base64
import ipaddress
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

MAX_ANSWER_BYTES = 64 << 10
USER_AGENT = "llmq-webhooks/1"


class RefusedUrl(ValueError):
    """A URL that llmq does not send to."""


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: str) -> None:
    try:
        Webhook(secret)
    except Exception:
        raise RefusedUrl("LLMQ_WEBHOOK_SECRET: not a Standard Webhooks secret (whsec_ and "
                         "base64; `llmq webhooks secret` makes one)") from None


def check_url(url: str) -> None:
    """Its form only (no lookup): http(s), a host, no credentials in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedUrl(f"url {url!r}: only http and https URLs receive webhooks")
    if not parts.hostname:
        raise RefusedUrl(f"url {url!r}: no host")
    if parts.username or parts.password:
        raise RefusedUrl(f"url {url!r}: credentials do not belong in a webhook URL")
    try:
        parts.port  # noqa: B018 (a port out of range raises here)
    except ValueError as exc:
        raise RefusedUrl(f"url {url!r}: {exc}") from None


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(url: str, allow_private: bool) -> list[str]:
    """The addresses to send to; refused when any of them is loopback, link-local, private
    or otherwise not public (a name with one private address could be steered to it)."""
    check_url(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RefusedUrl(f"url {url!r}: {parts.hostname} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not allow_private:
        private = [a for a in addresses if not is_public(a)]
        if private:
            raise RefusedUrl(f"url {url!r}: {parts.hostname} resolves to {private[0]}, which "
                             "is not a public address (LLMQ_WEBHOOKS_ALLOW_PRIVATE=true allows "
                             "it)")
    return addresses


def signature(secrets_: list[str], event_id: str, timestamp: datetime, body: str) -> str:
    """``v1,<base64>`` per secret, space-separated (a rotation signs with both)."""
    return " ".join(Webhook(s).sign(event_id, timestamp, body) for s in secrets_)


@dataclass
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, event_id: str, body: str, secrets_: list[str], *, timeout: float,
         allow_private: bool) -> Outcome:
    """One attempt; never raises for what the receiver or the network does."""
    started = time.monotonic()

    def outcome(status: int | None, error: str | None) -> Outcome:
        return Outcome(status, error, (time.monotonic() - started) * 1000)

    try:
        addresses = resolve(url, allow_private)
    except RefusedUrl as exc:
        return outcome(None, str(exc))
    parts = urlsplit(url)
    address = addresses[0]
    host = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{host}:{parts.port}" if parts.port else host,
                         parts.path or "/", parts.query, ""))
    now = datetime.now().astimezone()
    headers = {
        "host": parts.netloc, "content-type": "application/json", "user-agent": USER_AGENT,
        "webhook-id": event_id, "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature(secrets_, event_id, now, body),
    }
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    deadline = started + timeout
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False,
                          trust_env=False) as client, client.stream(
                "POST", pinned, content=body.encode(), headers=headers,
                extensions=extensions) as answer:
            read = 0
            for chunk in answer.iter_raw():  # drained a little, for keep-alive's sake
                read += len(chunk)
                if read >= MAX_ANSWER_BYTES or time.monotonic() > deadline:
                    break
            status = answer.status_code
    except httpx.TimeoutException:
        return outcome(None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return outcome(None, f"{type(exc).__name__}: {exc}" if str(exc)
                       else type(exc).__name__)
    if 300 <= status < 400:
        location = answer.headers.get("location", "?")
        return outcome(status, f"redirect to {location[:200]} not followed")
    if not 200 <= status < 300:
        return outcome(status, f"HTTP {status}")
    return outcome(status, None)
