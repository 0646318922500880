"""How a nats-py call becomes a :class:`BrokerError`: :class:`CallGuard`.

Two things make this its own concern. Every nats-py failure is turned into a one-line message
that never carries the connection's password or token. And a permission violation is reported by
the NATS server asynchronously (``-ERR 'Permissions Violation for Publish to "..."'``, handed to the
client's error callback), while the request that caused it just waits for an answer that never
comes: the guard matches each violation to the calls in flight by subject and fails those at once,
instead of letting them time out.

Everything here but :meth:`CallGuard.to_broker_error` runs on the broker's asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, TypeVar

import nats.errors
import nats.js.errors

from vmbusops.fleet.broker import BrokerDenied, BrokerError
from vmbusops.psrp.ssh_bridge import LoopClosedError

log = logging.getLogger(__name__)

T = TypeVar("T")

_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"'\s]+)", re.I)
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]*@")


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match, case-insensitive (the client lowercases the server's errors)."""
    p, s = pattern.lower().split("."), subject.lower().split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


class Denied(Exception):
    """The server refused this connection's user a publish or a subscription."""

    def __init__(self, op: str, subject: str) -> None:
        super().__init__(f"{op} to {subject}")
        self.op, self.subject = op, subject


class CallGuard:
    def __init__(self, secrets: tuple[str, ...], timeout: float) -> None:
        self._secrets = tuple(s for s in secrets if s)
        self._timeout = timeout
        self._waiters: list[tuple[tuple[str, ...], asyncio.Future[Denied]]] = []
        #: A refused subscription (the client's inbox): every request then times out.
        self.sub_denied: Denied | None = None

    async def on_error(self, exc: Exception) -> None:
        """nats-py's error callback."""
        text = str(exc)
        m = _VIOLATION.search(text)
        if m is None:
            log.debug("nats: %s", self.redact(text))
            return
        denied = Denied("publish" if m.group(1).lower() == "publish" else "subscribe", m.group(2))
        if denied.op == "subscribe":
            self.sub_denied = denied
        for patterns, fut in self._waiters:
            if fut.done():
                continue
            if denied.op == "subscribe" or any(subject_matches(p, denied.subject) for p in patterns):
                fut.set_result(denied)

    async def guarded(self, coro: Coroutine[Any, Any, T], subjects: tuple[str, ...]) -> T:
        """``coro``'s result, or :class:`Denied` as soon as the server refuses one of
        ``subjects`` (NATS wildcards) or any subscription."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        denied: asyncio.Future[Denied] = loop.create_future()
        entry = (subjects, denied)
        self._waiters.append(entry)
        try:
            either: set[asyncio.Future[Any]] = {task, denied}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise denied.result()
        finally:
            self._waiters.remove(entry)
            if not task.done():
                task.cancel()
                with suppress(BaseException):
                    await task

    def redact(self, text: str) -> str:
        text = _URL_USERINFO.sub(r"\1", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, nats.js.errors.APIError):
            what = exc.description or type(exc).__name__
            return f"{what} (code {exc.code}, error {exc.err_code})"
        if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
            return "no responders (no stream or consumer takes this subject, or JetStream is off)"
        if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
            text = f"timed out after {self._timeout:g} s"
            if self.sub_denied is not None:
                text += f" (the server refused to subscribe to {self.sub_denied.subject})"
            return text
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = exc.verify_message or str(exc)
            return f"the server's TLS certificate is not trusted ({why}); give the CA that signed it"
        if isinstance(exc, ssl.SSLError):
            return f"the TLS handshake failed ({exc.reason or exc})"
        if isinstance(exc, nats.errors.ConnectionClosedError):
            return "the connection is closed"
        if isinstance(exc, nats.errors.NoServersError):
            return "no server could be reached"
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).casefold():
            # At connect, the client gives the server's -ERR as a plain Error with its text.
            return "the server refused the user or its password (authorization violation)"
        text = str(exc).removeprefix("nats: ").strip()
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def to_broker_error(self, what: str, exc: BaseException, subjects: tuple[str, ...]) -> BrokerError:
        """The one-line :class:`BrokerError` for ``exc``, raised while doing ``what``."""
        if isinstance(exc, BrokerError):
            return exc
        if isinstance(exc, Denied):
            # The client lowercases the server's error: show the subject as we spelled it.
            subject = next((s for s in subjects if s.lower() == exc.subject.lower()), exc.subject)
            return BrokerDenied(
                f"{what}: the NATS server does not let this user {exc.op} to {subject}"
                " (a fleet host's user may use its own subjects only)"
            )
        if isinstance(exc, LoopClosedError):
            return BrokerError(f"{what}: the broker connection is closed")
        return BrokerError(f"{what}: {self.redact(self.describe(exc))}")
