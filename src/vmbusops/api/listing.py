"""The query of a listing (``GET /v1/jobs``, ``GET /v1/vms/{vm}/runs``): its filters and its cursor.

Listings are newest first and paged by keyset on the job id: a page's ``next`` is the id to
continue below (``?cursor=``), so a page costs the same however deep it is, and jobs created
meanwhile never shift the pages a client is reading. Every parameter is checked: an unknown
state, a time that is not one, a cursor that is not a job id, a parameter the listing does not
take, all answer 400 with problem details saying which and why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from vmbusops.api.problems import ApiProblem
from vmbusops.engine.states import State
from vmbusops.errors import ConfigError
from vmbusops.when import parse_since

MAX_LIMIT = 500
#: A listing reads at most this many jobs per request to fill a page of what the caller may see;
#: past it, the page ends early with a ``next`` cursor to continue from.
MAX_SCAN = 2000
_STATES = {s.value: s for s in State}
_MAX_ID = (1 << 63) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQuery:
    limit: int = 50
    #: Only jobs with an id below this (the previous page's ``next``).
    cursor: int | None = None
    state: State | None = None
    since: float | None = None
    vm: str | None = None
    submitter: str | None = None


def _bad(detail: str) -> ApiProblem:
    return ApiProblem(400, "bad-request", "Bad request", detail)


def parse_list_query(params: Mapping[str, str], *, allowed: frozenset[str], now: float | None = None) -> ListQuery:
    """The listing query in ``params``; :class:`ApiProblem` 400 on anything it cannot take."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise _bad(f"unknown query parameter {unknown[0]!r}; this listing takes: {', '.join(sorted(allowed))}")
    limit = 50
    if "limit" in params:
        raw = params["limit"]
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
            raise _bad(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(raw)
    cursor = None
    if params.get("cursor"):
        raw = params["cursor"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > _MAX_ID:
            raise ApiProblem(400, "bad-cursor", "Bad cursor", "cursor must be a page's next (a job id)")
        cursor = int(raw)
    state = None
    if "state" in params:
        state = _STATES.get(params["state"])
        if state is None:
            raise _bad(f"unknown state {params['state'][:40]!r}; one of: {', '.join(_STATES)}")
    since = None
    if "since" in params:
        try:
            since = parse_since(params["since"], time.time() if now is None else now, name="since")
        except ConfigError as exc:
            raise _bad(exc.message) from None
    vm = params.get("vm")
    submitter = params.get("submitter")
    for name, value in (("vm", vm), ("submitter", submitter)):
        if value is not None and not value.strip():
            raise _bad(f"{name} must not be empty")
    return ListQuery(limit=limit, cursor=cursor, state=state, since=since, vm=vm, submitter=submitter)


def next_link(path: str, params: Mapping[str, str], cursor: int | None) -> dict[str, str]:
    """The ``Link: <...>; rel="next"`` header of a page that has a next one."""
    if cursor is None:
        return {}
    query = urlencode({**{k: v for k, v in params.items() if k != "cursor"}, "cursor": str(cursor)})
    return {"Link": f'<{path}?{query}>; rel="next"'}


JOB_PARAMS = frozenset({"limit", "cursor", "state", "since", "vm", "submitter"})
VM_RUN_PARAMS = frozenset({"limit", "cursor", "state", "since"})

__all__ = ["JOB_PARAMS", "MAX_SCAN", "VM_RUN_PARAMS", "ListQuery", "next_link", "parse_list_query"]
