"""The HTTP API (``/v1``), as a Starlette application over an :class:`~.service.AgentService`.

Every request is authenticated first (bearer token or registered client certificate), then its
operation is checked against the principal's scope, then what it names (a job) against the
principal's VMs. Every refusal is logged with who and why and answered with problem details
(RFC 7807); the token itself is never logged, only its public id.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vmbusops import __version__, receipts
from vmbusops.api.auth import Operation, Principal, Refusal
from vmbusops.api.console import SecurityHeaders, console_routes
from vmbusops.api.cursor import CursorError, parse_cursor
from vmbusops.api.follow import SERVER_SEND, EventStream, JobFollower, RecordText
from vmbusops.api.listing import JOB_PARAMS, VM_RUN_PARAMS, next_link, parse_list_query
from vmbusops.api.openapi import openapi_document
from vmbusops.api.problems import ApiProblem, from_error, host_down, job_not_visible, not_found
from vmbusops.api.service import AgentService, AgentStopping, NotActiveController, TargetsOutOfScope
from vmbusops.api.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, ConsoleSessions, cross_site
from vmbusops.api.tls import peer_certificate
from vmbusops.engine import JobSource
from vmbusops.engine.journal import Journal, RunView
from vmbusops.engine.views import job_json, run_json, vm_run_json
from vmbusops.errors import HostDownError, JobStateError, VmbusOpsError
from vmbusops.records import Stream

T = TypeVar("T")
log = logging.getLogger("vmbusops.api")

BUNDLE_TYPES = ("application/octet-stream", "application/vnd.vmbusops.bundle")
MAX_JSON_BODY = 4096
MAX_ID = (1 << 63) - 1
#: JSON as :class:`JSONResponse` renders it.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

Handler = Callable[[Request], Awaitable[Response]]


class Api(Starlette):
    """The application, which tells its responses the server's own ``send`` (a follower's event
    stream sends its body there, past the middleware: see :class:`~.follow.EventStream`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def build_app(service: AgentService) -> Starlette:
    sessions = ConsoleSessions(service.principals)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "-"

    def refuse(request: Request, status: int, who: str, why: str, reason: str, **headers: str) -> ApiProblem:
        service.metrics.refusals.labels(reason).inc()
        log.warning(
            "refused",
            extra={
                "event": "refused", "who": who, "why": why, "status": status,
                "method": request.method, "path": request.url.path, "client": client_of(request),
            },
        )  # fmt: skip
        titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 429: "Too many submissions"}
        kinds = {401: "unauthorized", 403: "forbidden", 404: "not-found", 429: "rate-limited"}
        return ApiProblem(
            status, kinds.get(status, reason), titles.get(status, "Refused"), why, headers=headers
        )

    def authenticate(request: Request, operation: Operation) -> Principal:
        header = request.headers.get("authorization")
        now = time.time()
        result: Principal | Refusal
        why = cross_site(request.method, request.headers, request.url.scheme, request.headers.get("host", ""))
        if why is not None:
            raise refuse(request, 403, "browser", why, "cross-site")
        cookie = request.cookies.get(SESSION_COOKIE)
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise refuse(request, 401, "anonymous", "the Authorization header is not a bearer token", "auth",
                             **{"WWW-Authenticate": "Bearer"})  # fmt: skip
            result = service.principals.authenticate_token(token.strip(), now)
        elif cookie is not None:  # the web console's session (see api/sessions.py)
            got = sessions.authenticate(cookie)
            result = got if isinstance(got, Refusal) else got[0]
            if (
                not isinstance(got, Refusal)
                and request.method not in SAFE_METHODS
                and not sessions.csrf_matches(got[1], request.headers.get(CSRF_HEADER))
            ):
                raise refuse(request, 403, str(result), "missing or wrong CSRF token", "csrf")
        else:
            der = peer_certificate()
            if der is None:
                raise refuse(
                    request, 401, "anonymous", "no credentials", "auth", **{"WWW-Authenticate": "Bearer"}
                )
            result = service.principals.authenticate_certificate(der, now)
        if isinstance(result, Refusal):
            raise refuse(request, 401, result.who, result.why, "auth", **{"WWW-Authenticate": "Bearer"})
        if not result.may(operation):
            raise refuse(request, 403, str(result), f"scope does not allow {operation.value}", "scope")
        return result

    async def visible(request: Request, who: Principal) -> tuple[Any, list[RunView]]:
        """The job named in the path and its runs, if ``who`` may see it. A missing job and another
        tenant's job get the same answer (and the same refusal metric); only the log, which only
        the operator reads, says which it was."""
        job_id = int(request.path_params["job_id"])
        got = await service.find_job(job_id) if job_id <= MAX_ID else None
        return may_see(request, who, job_id, got, [r.vm for r in got[1]] if got is not None else [])

    async def visible_targets(request: Request, who: Principal) -> tuple[Any, list[str], str]:
        """As :func:`visible`, with only the VMs the job targets, and their JSON (a status call's read)."""
        job_id = int(request.path_params["job_id"])
        got = await service.find_job_targets(job_id) if job_id <= MAX_ID else None
        return may_see(request, who, job_id, got, got[1] if got is not None else [])

    def may_see(request: Request, who: Principal, job_id: int, got: T | None, vms: list[str]) -> T:
        if got is not None and who.sees_job(vms):
            return got
        why = f"no job {job_id}" if got is None else f"job {job_id} targets VMs outside the scope"
        refuse(request, 404, str(who), why, "not-visible")
        raise job_not_visible(job_id)

    def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
            raise ApiProblem(
                400, "bad-request", "Bad request", f"{name} must be a whole number from {low} to {high}"
            )
        return int(raw)

    # ------------------------------------------------------------------ handlers
    async def health(request: Request) -> Response:
        host = service.hosts.status
        status = (
            "stopping" if service.stopping
            else "starting" if not service.ready
            else "ready" if host.up
            else "host-down"
        )  # fmt: skip
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(host.since))
        body = {
            "status": status, "version": __version__, "jobs_running": len(service.running),
            "host": {"name": host.name, "up": host.up, "since": since},
        }  # fmt: skip
        # A host being reopened: when to look again (as a refused submission says too).
        retry = {"Retry-After": str(max(1, math.ceil(service.hosts.retry_after)))} if status == "host-down" else None
        return JSONResponse(body, status_code=200 if status == "ready" else 503, headers=retry)

    async def metrics(request: Request) -> Response:
        authenticate(request, Operation.METRICS)
        service.metrics.followers.set(service.broadcaster.followers)
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def submit(request: Request) -> Response:
        who = authenticate(request, Operation.SUBMIT)
        if service.stopping:
            raise ApiProblem(
                503,
                "stopping",
                "The agent is stopping",
                "try again when it is back",
                headers={"Retry-After": "5"},
            )
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in BUNDLE_TYPES:
            raise ApiProblem(415, "unsupported-media-type", "Unsupported media type",
                             "send the .vmb file's bytes as application/octet-stream")  # fmt: skip
        limit = service.config.max_bundle_bytes
        length = request.headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > limit):
            raise ApiProblem(413, "too-large", "Bundle too large", f"bundles may be at most {limit} bytes")
        wait = service.limiter.try_acquire(who.id)
        if wait is not None:
            raise refuse(request, 429, str(who), f"submission rate exceeded; retry in {wait:.1f}s", "rate",
                         **{"Retry-After": str(max(1, round(wait)))})  # fmt: skip
        started = time.perf_counter()
        try:
            path = await service.receive_bundle(request.stream(), limit)
        except OverflowError:
            service.metrics.submissions.labels("too-large").inc()
            raise ApiProblem(
                413, "too-large", "Bundle too large", f"bundles may be at most {limit} bytes"
            ) from None
        try:
            if path.stat().st_size == 0:
                raise ApiProblem(
                    400, "bad-request", "Bad request", "the body is empty; send the .vmb file's bytes"
                )
            try:
                bundle, targets = await service.accept(path, who)
            except HostDownError as exc:
                service.metrics.submissions.labels("host-down").inc()
                raise host_down(exc) from None
            except NotActiveController as exc:
                service.metrics.submissions.labels("standby").inc()
                where = f"; the active one is {exc.active_url}" if exc.active_url else ""
                raise ApiProblem(503, "not-active", "Not the active controller",
                                 f"this fleet controller is on standby{where}", headers={"Retry-After": "2"}) from None  # fmt: skip
            except TargetsOutOfScope as exc:
                service.metrics.submissions.labels("out-of-scope").inc()
                raise refuse(request, 403, str(who), f"bundle targets VMs outside the scope: {', '.join(exc.vms) or '(its groups or tags select none inside)'}",
                             "tenant") from None  # fmt: skip
            except VmbusOpsError as exc:
                service.metrics.submissions.labels("rejected").inc()
                log.warning(
                    "bundle rejected", extra={"event": "rejected", "who": str(who), "why": exc.message}
                )
                raise from_error(exc) from None
        finally:
            path.unlink(missing_ok=True)
        manifest = bundle.manifest
        if manifest.schedule is not None and service.register_schedule is not None:
            made = False
            try:
                entry = await service.register_schedule(bundle)
                made = True
            finally:
                await service.settle(bundle, made=made)
            service.metrics.submissions.labels("scheduled").inc()
            log.info(
                "schedule registered", extra={"event": "scheduled", "who": str(who), "bundle": manifest.name}
            )
            return JSONResponse({"schedule": entry}, status_code=202)
        made = False
        try:
            source = JobSource.from_accepted(
                bundle, targets=tuple(targets), submitter=who.submitter(peer_certificate())
            )
            job_id = await service.start_job(source, origin=str(who))
            made = True
        except AgentStopping:
            raise ApiProblem(503, "stopping", "The agent is stopping", "try again when it is back") from None
        except VmbusOpsError as exc:
            service.metrics.submissions.labels("not-started").inc()
            raise from_error(exc) from None
        finally:
            await service.settle(bundle, made=made)
        service.metrics.submissions.labels("accepted").inc()
        service.metrics.submit_seconds.observe(time.perf_counter() - started)
        log.info(
            "job submitted",
            extra={"event": "submitted", "who": str(who), "job": job_id, "bundle": manifest.name},
        )
        job, runs = await service.read(lambda j: (j.job(job_id), j.runs(job_id)))
        return JSONResponse(
            {"job": job_json(job, [r.vm for r in runs])}, status_code=201, headers={"Location": f"/v1/jobs/{job_id}"}
        )

    async def list_jobs(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        params = dict(request.query_params)
        jobs, cursor = await service.visible_jobs(who, parse_list_query(params, allowed=JOB_PARAMS))
        body = {"jobs": [job_json(j) for j in jobs], "next": None if cursor is None else str(cursor)}
        return JSONResponse(body, headers=next_link(request.url.path, params, cursor))

    async def vm_runs(request: Request) -> Response:
        """One VM's runs across the jobs the caller may see (its history); a VM outside the
        caller's scope is answered as one without runs is not: 404, as a job it may not see."""
        who = authenticate(request, Operation.READ)
        vm = request.path_params["vm"]
        params = dict(request.query_params)
        query = parse_list_query(params, allowed=VM_RUN_PARAMS)
        if not who.covers_vm(vm):
            refuse(request, 404, str(who), f"VM {vm!r} is outside the scope", "not-visible")
            raise not_found(f"VM {vm}")
        runs, cursor = await service.visible_vm_runs(who, vm, query)
        body = {"runs": [vm_run_json(r) for r in runs], "next": None if cursor is None else str(cursor)}
        return JSONResponse(body, headers=next_link(request.url.path, params, cursor))

    async def get_job(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        job, _, targets = await visible_targets(request, who)
        # What JSONResponse would send for {"job": job_json(job, targets)}, the targets (most of
        # it) spliced in as the service encoded them once: they come last.
        body = _encode({"job": job_json(job)})
        return Response(f'{body[:-2]},"targets":{targets}}}}}', media_type="application/json")

    async def get_runs(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        _, runs = await visible(request, who)
        steps = await service.read(lambda j: [(j.steps(r.id), j.checkpoints(r.id)) for r in runs])
        return JSONResponse({"runs": [run_json(r, *s) for r, s in zip(runs, steps, strict=True)]})

    def run_named(runs: list[RunView], vm: str, job_id: int) -> RunView:
        run = next((r for r in runs if r.vm.casefold() == vm.casefold()), None)
        if run is None:
            raise not_found(f"run on {vm} in job {job_id}")
        return run

    async def get_run(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        job, runs = await visible(request, who)
        run = run_named(runs, request.path_params["vm"], job.id)
        steps, checkpoints = await service.read(lambda j: (j.steps(run.id), j.checkpoints(run.id)))
        return JSONResponse({"run": run_json(run, steps, checkpoints)})

    async def run_receipt(request: Request) -> Response:
        """The run's signed receipt (:mod:`vmbusops.receipts`), or its transcript's bytes."""
        who = authenticate(request, Operation.READ)
        job, runs = await visible(request, who)
        run = run_named(runs, request.path_params["vm"], job.id)
        try:
            if request.url.path.endswith("/transcript"):
                body = await service.read(lambda j: b"".join(receipts.transcript_of(j, run)))
                return Response(body, media_type="application/x-ndjson")
            body = await service.read(lambda j: receipts.write_receipt(j, run, receipts.host_key()))
        except JobStateError as exc:
            raise ApiProblem(409, "not-finished", "No receipt yet", exc.message) from None
        return Response(body, media_type="application/json")

    async def cancel(request: Request) -> Response:
        who = authenticate(request, Operation.CANCEL)
        vm: str | None = request.path_params.get("vm")
        if vm is None:
            body = await read_small_json(request)
            if body is not None:
                if (
                    not isinstance(body, dict)
                    or set(body) - {"vm"}
                    or not isinstance(body.get("vm", ""), str)
                ):
                    raise ApiProblem(400, "bad-request", "Bad request", 'the body, if any, is {"vm": "NAME"}')
                vm = body.get("vm")
        job, runs = await visible(request, who)
        if vm is not None:
            vm = run_named(runs, vm, job.id).vm
        if not job.state.active:
            raise ApiProblem(409, "not-active", "Nothing to cancel", f"job {job.id} is {job.state.value}; nothing to cancel",
                             state=job.state.value)  # fmt: skip
        await service.cancel(job.id, vm)
        log.info("cancel requested", extra={"event": "cancel", "who": str(who), "job": job.id, "vm": vm})
        return JSONResponse({"job": job.id, "vm": vm, "cancel_requested": True}, status_code=202)

    async def resume(request: Request) -> Response:
        """Resume an interrupted job here (``vmbusops jobs resume``, through the agent): its
        bundle is judged again first; refused, the job ends failed and nothing runs (422)."""
        who = authenticate(request, Operation.SUBMIT)
        if await read_small_json(request) is not None:
            raise ApiProblem(400, "bad-request", "Bad request", "send no body: the job is named in the path")
        job, runs = await visible(request, who)
        try:
            await service.resume_job(job.id, origin=str(who))
        except AgentStopping:
            raise ApiProblem(503, "stopping", "The agent is stopping", "try again when it is back",
                             headers={"Retry-After": "5"}) from None  # fmt: skip
        except JobStateError as exc:
            raise ApiProblem(409, "not-interrupted", "Not resumable", exc.message, hint=exc.hint,
                             state=job.state.value) from None  # fmt: skip
        except VmbusOpsError as exc:
            log.warning("resume refused", extra={"event": "resume-refused", "who": str(who), "job": job.id, "why": exc.message})
            raise from_error(exc) from None
        log.info("job resumed", extra={"event": "resumed", "who": str(who), "job": job.id})
        now = await service.read(lambda j: j.job(job.id))
        return JSONResponse({"job": job_json(now, [r.vm for r in runs])}, status_code=202)

    async def records(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        job, runs = await visible(request, who)
        limit = query_int(request, "limit", 1000, 1, 10_000)
        vm = request.query_params.get("vm")
        stream = request.query_params.get("stream")
        if stream is not None and stream not in {s.value for s in Stream}:
            raise ApiProblem(400, "bad-request", "Bad request", f"unknown stream {stream!r}")
        after = cursor_at(request.query_params.get("after", ""))
        run_id = run_named(runs, vm, job.id).id if vm is not None else None
        text = RecordText(runs)

        def page(journal: Journal) -> tuple[int, str]:
            rows = journal.stored_records(job.id, after=after, run_id=run_id, stream=stream, limit=limit)
            return (rows[-1][1] if rows else after), ",".join(map(text, rows))

        cursor, records = await service.read(page)
        # The records' JSON is spliced as stored (see RecordText); the rest is encoded here.
        body = f'{{"records":[{records}],"cursor":"{cursor}","state":{json.dumps(job.state.value)}}}'
        return Response(body, media_type="application/json")

    def cursor_at(text: str) -> int:
        try:
            return parse_cursor(text)
        except CursorError as exc:
            raise ApiProblem(400, "bad-cursor", "Bad cursor", str(exc)) from None

    async def events(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        job, runs = await visible(request, who)
        text = request.headers.get("last-event-id") or request.query_params.get("after", "")
        def still_allowed() -> bool:
            # As the request was let in: a token revoked or expired, or a session ended since,
            # ends the stream (and the refusal is logged once, as any other).
            try:
                authenticate(request, Operation.READ)
            except ApiProblem:
                return False
            return True

        follower = JobFollower(service, job, runs, cursor_at(text), still_allowed)
        return EventStream(
            follower.events(),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            on_writer=follower.use_writer,
        )

    async def schedules(request: Request) -> Response:
        who = authenticate(request, Operation.READ)
        listing = service.list_schedules() if service.list_schedules is not None else []
        return JSONResponse({"schedules": [s for s in listing if who.sees_job(s["targets"])]})

    async def remove_schedule(request: Request) -> Response:
        """Forget a schedule: none of its ticks runs from now on (a job it started goes on). A
        schedule outside the caller's scope is answered as one that does not exist."""
        who = authenticate(request, Operation.CANCEL)
        name = request.path_params["name"]
        listing = service.list_schedules() if service.list_schedules is not None else []
        entry = next((s for s in listing if s["name"] == name), None)
        if entry is None or not who.sees_job(entry["targets"]) or service.remove_schedule is None:
            refuse(request, 404, str(who), f"no schedule {name!r} visible", "not-visible")
            raise not_found(f"schedule {name!r} visible to you")
        service.remove_schedule(name)
        log.info("schedule removed", extra={"event": "schedule-remove", "who": str(who), "schedule": name})
        return JSONResponse({"schedule": name, "removed": True})

    async def read_small_json(request: Request) -> Any:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BODY:
                raise ApiProblem(413, "too-large", "Body too large", f"at most {MAX_JSON_BODY} bytes")
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiProblem(400, "bad-request", "Bad request", "the body is not JSON") from None

    # ------------------------------------------------------------------ errors
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return exc.response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return ApiProblem(
            exc.status_code, "http", str(exc.detail), str(exc.detail), headers=dict(exc.headers or {})
        ).response(request.url.path)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("request failed", extra={"event": "error", "path": request.url.path})
        return ApiProblem(500, "internal", "Internal error", "the agent failed; see its log").response(
            request.url.path
        )

    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/runs", get_runs, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/runs/{vm}", get_run, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/cancel", cancel, methods=["POST"]),
        Route("/v1/jobs/{job_id:int}/resume", resume, methods=["POST"]),
        Route("/v1/jobs/{job_id:int}/runs/{vm}/cancel", cancel, methods=["POST"]),
        Route("/v1/jobs/{job_id:int}/runs/{vm}/receipt", run_receipt, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/runs/{vm}/transcript", run_receipt, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/records", records, methods=["GET"]),
        Route("/v1/jobs/{job_id:int}/events", events, methods=["GET"]),
        Route("/v1/vms/{vm}/runs", vm_runs, methods=["GET"]),
        Route("/v1/schedules", schedules, methods=["GET"]),
        Route("/v1/schedules/{name}", remove_schedule, methods=["DELETE"]),
        *console_routes(service, sessions, authenticate, refuse),
    ]
    return Api(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={ApiProblem: on_problem, HTTPException: on_http, Exception: on_error},
    )
