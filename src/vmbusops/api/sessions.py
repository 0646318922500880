"""Browser sessions for the web console, and what keeps other sites from acting through them.

Theory of operation
-------------------
A browser cannot put a bearer token on an ``EventSource`` (it sets no headers), so the console
signs in once: it posts the token (JSON, from the console's own script) to ``/console/session``,
the agent checks it exactly as it checks a bearer token, and answers with a session cookie:
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it),
``Secure`` when the agent serves TLS, ``Path=/`` (the console's calls go to ``/v1``). The cookie
holds a random session id; the agent keeps, in memory, only its SHA-256 and the principal's
*id*, so every request reads the principal again: a revoked or expired token ends its sessions
at once, and a restarted agent has none (sign in again). A session lasts at most
:data:`SESSION_LIFETIME` seconds, and less if idle for :data:`SESSION_IDLE`.

Each session also has a CSRF token, given to the console's script by ``GET /console/session``
(same origin only: the agent sends no CORS headers, so no other site can read it). A request
authenticated by the cookie that is not a plain read (any method but GET and HEAD) must carry it
in :data:`CSRF_HEADER`, or it is refused. ``SameSite=Strict`` already keeps the cookie off
cross-site requests; the token is the second lock, for browsers and proxies that do not honour it.

A client certificate is as ambient as a cookie (the browser sends it to any page's request), and a
certificate-authenticated browser has no session and so no CSRF token. For every caller,
:func:`cross_site` refuses a state-changing request that a browser marks as coming from another
site (``Sec-Fetch-Site``) or another origin (``Origin``). Programs (runbooks, the CLI) send
neither header and are not affected.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vmbusops.api.auth import Principal, PrincipalStore, Refusal
from vmbusops.errors import ConfigError

SESSION_COOKIE = "vmbusops_session"
CSRF_HEADER = "x-vmbusops-csrf"
#: At most this long after sign-in, and this long without a request.
SESSION_LIFETIME = 12 * 3600.0
SESSION_IDLE = 2 * 3600.0
#: Sessions kept at most; past it, the oldest go first (each sign-in makes one).
MAX_SESSIONS = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(slots=True)
class _Session:
    principal_id: str
    csrf: str
    created: float
    seen: float


class ConsoleSessions:
    """Signed-in browsers: session id (by its hash) -> principal id and CSRF token."""

    def __init__(self, principals: PrincipalStore, *, clock: Callable[[], float] = time.time) -> None:
        self.principals = principals
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}

    def open(self, principal: Principal) -> tuple[str, str]:
        """A new session for ``principal``: its id (for the cookie) and its CSRF token."""
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[_digest(session_id)] = _Session(principal.id, csrf, now, now)
        return session_id, csrf

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(session_id), None)

    def authenticate(self, session_id: str) -> tuple[Principal, str] | Refusal:
        """The session's principal (read again now) and its CSRF token, or why not."""
        now = self.clock()
        key = _digest(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and not self._live(session, now):
                del self._sessions[key]
                session = None
            if session is not None:
                session.seen = now
        if session is None:
            return Refusal("session", "no such console session (signed out or expired); sign in again")
        try:
            principal = self.principals.get(session.principal_id)
        except ConfigError:
            self.close(session_id)
            return Refusal(f"token:{session.principal_id}", "the session's token is gone")
        if not principal.active(now):
            self.close(session_id)
            return Refusal(str(principal), "the session's token was revoked or has expired")
        return principal, session.csrf

    @staticmethod
    def csrf_matches(expected: str, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())

    def _live(self, session: _Session, now: float) -> bool:
        return now - session.created < SESSION_LIFETIME and now - session.seen < SESSION_IDLE

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if not self._live(s, now)]:
            del self._sessions[key]

    def __len__(self) -> int:
        return len(self._sessions)


def cross_site(method: str, headers: Mapping[str, str], scheme: str, host: str) -> str | None:
    """Why a state-changing request looks like another site's page made it, or None."""
    if method in SAFE_METHODS:
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a {fetch_site} request may not change anything"
    origin = headers.get("origin")
    if origin is not None and origin != f"{scheme}://{host}":
        return "a request from another origin may not change anything"
    return None


def session_cookie(session_id: str, *, secure: bool, max_age: int | None = None) -> str:
    """The ``Set-Cookie`` value of a session (``max_age=0`` clears it)."""
    parts = [f"{SESSION_COOKIE}={session_id}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
