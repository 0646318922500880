"""The web console: static files under ``/console/``, its sign-in, the host's VMs, and the headers
every response of the agent carries.

The console is three files shipped in the package (:data:`FILES`, in ``console_files/``): an
HTML page, a script and a style sheet, with no build step and nothing third-party. The script
speaks only the agent's own API (``/v1``) plus ``/console/session`` (sign-in, see
:mod:`.sessions`), so a tenant sees in the console exactly what its token sees through the API.

Guest output is hostile text. The script inserts every string with ``textContent`` and never
parses markup; the Content-Security-Policy below (no inline script or style, nothing from another
origin, no framing, no form posted elsewhere) is the second lock, should a mistake let markup in.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmbusops.api.auth import Operation, Principal, Refusal
from vmbusops.api.problems import ApiProblem, from_error, host_down
from vmbusops.api.service import AgentService
from vmbusops.api.sessions import CSRF_HEADER, SESSION_COOKIE, ConsoleSessions, session_cookie
from vmbusops.errors import HostDownError, VmbusOpsError

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

#: Every file the console serves: URL name -> (file in console_files/, media type).
FILES: dict[str, tuple[str, str]] = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
}
MAX_SIGN_IN_BODY = 1024
log = logging.getLogger("vmbusops.api")

Authenticate = Callable[[Request, Operation], Principal]
Refuse = Callable[..., ApiProblem]


class SecurityHeaders:
    """ASGI middleware: the console's security headers on every response (an API answer opened
    in a browser tab is as hostile as a record in the console). Streams pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _load(name: str) -> bytes:
    return resources.files("vmbusops.api").joinpath("console_files", name).read_bytes()


def console_routes(
    service: AgentService, sessions: ConsoleSessions, authenticate: Authenticate, refuse: Refuse
) -> list[Route]:
    """The console's routes; ``authenticate`` and ``refuse`` are the API's own (see :mod:`.app`)."""
    files = {name: (_load(file), media) for name, (file, media) in FILES.items()}

    async def to_console(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=308)

    async def static(request: Request) -> Response:
        found = files.get(request.path_params.get("name", ""))
        if found is None:
            raise ApiProblem(404, "not-found", "Not found", "no such console file")
        body, media = found
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    def describe(who: Principal, via: str, csrf: str | None) -> dict[str, Any]:
        return {
            "id": who.id, "kind": who.kind, "name": who.name, "via": via, "csrf": csrf,
            "operations": sorted(o.value for o in who.operations), "vms": list(who.vms),
        }  # fmt: skip

    async def whoami(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and "authorization" not in request.headers:
            got = sessions.authenticate(cookie)
            if isinstance(got, Refusal):
                raise refuse(request, 401, got.who, got.why, "auth")
            who, csrf = got
            return JSONResponse(describe(who, "session", csrf), headers={"Cache-Control": "no-store"})
        who = authenticate(request, Operation.READ)
        via = "token" if "authorization" in request.headers else "certificate"
        return JSONResponse(describe(who, via, None), headers={"Cache-Control": "no-store"})

    async def sign_in(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiProblem(415, "unsupported-media-type", "Unsupported media type", 'send {"token": "vmo_..."} as JSON')
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SIGN_IN_BODY:
                raise ApiProblem(413, "too-large", "Body too large", f"at most {MAX_SIGN_IN_BODY} bytes")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or set(doc) != {"token"} or not isinstance(doc["token"], str):
            raise ApiProblem(400, "bad-request", "Bad request", 'the body is {"token": "vmo_..."}')
        result = service.principals.authenticate_token(doc["token"].strip(), time.time())
        if isinstance(result, Refusal):
            raise refuse(request, 401, result.who, result.why, "auth")
        if not result.may(Operation.READ):
            raise refuse(request, 403, str(result), "scope does not allow read", "scope")
        session_id, csrf = sessions.open(result)
        log.info("console sign-in", extra={"event": "signed-in", "who": str(result)})
        response = JSONResponse(describe(result, "session", csrf), headers={"Cache-Control": "no-store"})
        response.headers["Set-Cookie"] = session_cookie(session_id, secure=request.url.scheme == "https")
        return response

    async def sign_out(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise ApiProblem(400, "bad-request", "Bad request", "not signed in")
        got = sessions.authenticate(cookie)
        if not isinstance(got, Refusal):
            if not sessions.csrf_matches(got[1], request.headers.get(CSRF_HEADER)):
                raise refuse(request, 403, str(got[0]), "missing or wrong CSRF token", "csrf")
            sessions.close(cookie)
            log.info("console sign-out", extra={"event": "signed-out", "who": str(got[0])})
        response = Response(status_code=204)
        response.headers["Set-Cookie"] = session_cookie("", secure=request.url.scheme == "https", max_age=0)
        return response

    async def vms(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        try:
            listing = await service.vm_listing(who)
        except HostDownError as exc:
            raise host_down(exc) from None
        except VmbusOpsError as exc:
            raise from_error(exc) from None
        return JSONResponse({"vms": listing})

    return [
        Route("/console", to_console, methods=["GET"]),
        Route("/console/", static, methods=["GET"]),
        Route("/console/static/{name}", static, methods=["GET"]),
        Route("/console/session", whoami, methods=["GET"]),
        Route("/console/session", sign_in, methods=["POST"]),
        Route("/console/session", sign_out, methods=["DELETE"]),
        Route("/v1/vms", vms, methods=["GET"]),
    ]
