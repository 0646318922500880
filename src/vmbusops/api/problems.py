"""RFC 7807 problem details: every refusal and failure the API answers with."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse

from vmbusops.errors import (
    BundleError,
    ConfigError,
    CredentialStoreError,
    HostDownError,
    JournalError,
    NoSuchCredentialError,
    VmbusOpsError,
)

PROBLEM_TYPE = "urn:vmbusops:problem:"
MEDIA_TYPE = "application/problem+json"


class ApiProblem(Exception):
    """Raised inside a handler; the app turns it into a problem-details response."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def response(self, instance: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        if instance:
            body["instance"] = instance
        return JSONResponse(body, status_code=self.status, headers=self.headers, media_type=MEDIA_TYPE)


def from_error(exc: VmbusOpsError) -> ApiProblem:
    """Our error, as the client should see it (messages never carry secrets, by contract), with
    its failure ``code`` (:class:`~vmbusops.errors.FailureCode`) for programs."""
    problem = _problem_of(exc)
    problem.extra.setdefault("code", exc.code.value)
    return problem


def _problem_of(exc: VmbusOpsError) -> ApiProblem:
    if isinstance(exc, BundleError):
        return ApiProblem(
            422, "bundle-rejected", "Bundle rejected", exc.message, reason=type(exc).__name__,
            hint=exc.hint, ran=False,
        )  # fmt: skip
    if isinstance(exc, NoSuchCredentialError):
        # The message names the store's path on the host; a remote caller needs only the name.
        return ApiProblem(
            422, "job-not-startable", "The job cannot start on this host",
            f"no credential named {exc.name!r} on this host",
            hint="the host's operator creates it with: vmbusops cred set " + exc.name,
        )  # fmt: skip
    if isinstance(exc, ConfigError | CredentialStoreError):
        return ApiProblem(
            422, "job-not-startable", "The job cannot start on this host", exc.message, hint=exc.hint
        )
    if isinstance(exc, HostDownError):
        return host_down(exc)
    if isinstance(exc, JournalError):
        return ApiProblem(503, "journal-unavailable", "The journal is unavailable", exc.message)
    return ApiProblem(503, "host-unavailable", "The host cannot take the job now", exc.message)


def host_down(exc: HostDownError) -> ApiProblem:
    """The host connection is being reopened: retryable, nothing was started (the cause is in the
    agent's log, not here: it may quote the host's stderr)."""
    return ApiProblem(
        503, "host-down", "The Hyper-V host is down", exc.message, hint=exc.hint, host=exc.host,
        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
    )  # fmt: skip


def not_found(what: str) -> ApiProblem:
    return ApiProblem(404, "not-found", "Not found", f"no {what}")


def job_not_visible(job_id: int) -> ApiProblem:
    """The one answer for a job that does not exist and for one outside the caller's scope: the
    same status, body and headers, so a tenant cannot tell another tenant's job from no job."""
    return not_found(f"job {job_id} visible to you")
