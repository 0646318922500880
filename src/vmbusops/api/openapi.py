"""The OpenAPI 3.1 document the agent serves at ``/v1/openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from vmbusops import __version__
from vmbusops.engine.states import State

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): _PROBLEM for c in codes}


def _job_path_params(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
        *extra,
    ]


#: A receipt's DSSE envelope (see vmbusops.receipts for the signed payload's fields).
_RECEIPT: dict[str, Any] = {
    "type": "object",
    "required": ["payloadType", "payload", "signatures"],
    "properties": {
        "payloadType": {"type": "string", "enum": ["application/vnd.vmbusops.receipt+json; version=1"]},
        "payload": {"type": "string", "contentEncoding": "base64"},
        "signatures": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"keyid": {"type": "string"}, "sig": {"type": "string"}},
            },
        },
    },
}
_VM_PARAM = {"name": "vm", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
_STATES = [s.value for s in State]
_LIST_PARAMS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    {
        "name": "cursor", "in": "query", "description": "a page's `next`: continue below this job id",
        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
    },
    {"name": "state", "in": "query", "schema": {"type": "string", "enum": _STATES}},
    {
        "name": "since", "in": "query",
        "description": "created at or after: an ISO 8601 date or date-time, or an age (30m, 2h, 3d, 1w)",
        "schema": {"type": "string", "minLength": 1},
    },
]  # fmt: skip
_VM_QUERY = {"name": "vm", "in": "query", "description": "jobs with a run on this VM", "schema": {"type": "string", "minLength": 1}}
_SUBMITTER_QUERY = {
    "name": "submitter", "in": "query", "description": "token:NAME, cert:SUBJECT, a local user, schedule:NAME",
    "schema": {"type": "string", "minLength": 1},
}  # fmt: skip
_NEXT = {"type": ["string", "null"], "description": "the cursor of the next page; null at the end"}


@cache
def openapi_document() -> dict[str, Any]:
    job_ref = {"$ref": "#/components/schemas/Job"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vmbusops agent",
            "version": __version__,
            "description": "Signed job bundles for Hyper-V tenant VMs, run over the VMBus; live records.",
        },
        "security": _AUTH,
        "paths": {
            "/v1/health": {
                "get": {
                    "summary": "Readiness",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "ready",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                            },
                        },
                        "503": {
                            "description": "starting, stopping, or the host connection is down (being reopened)",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                            },
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (scope: metrics)",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_problems(401, 403),
                    },
                }
            },
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a signed bundle (.vmb bytes); verified before anything runs (scope: submit)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "job started",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["job"],
                                        "properties": {"job": job_ref},
                                    }
                                }
                            },
                        },
                        "202": {
                            "description": "the bundle carries a schedule; registered",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["schedule"],
                                        "properties": {"schedule": {"$ref": "#/components/schemas/Schedule"}},
                                    }
                                }
                            },
                        },
                        **_problems(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                },
                "get": {
                    "summary": "Jobs visible to the caller, newest first, a page at a time (scope: read)",
                    "parameters": [*_LIST_PARAMS, _VM_QUERY, _SUBMITTER_QUERY],
                    "responses": {
                        "200": {
                            "description": "a page of jobs; `next` (also a Link rel=next header) continues it",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["jobs", "next"],
                                        "properties": {"jobs": {"type": "array", "items": job_ref}, "next": _NEXT},
                                    }
                                }
                            },
                        },
                        **_problems(400, 401, 403),
                    },
                },
            },
            "/v1/vms/{vm}/runs": {
                "get": {
                    "summary": "One VM's runs across the jobs visible to the caller, newest first (scope: read)",
                    "parameters": [_VM_PARAM, *_LIST_PARAMS],
                    "responses": {
                        "200": {
                            "description": "a page of the VM's runs; `next` (also a Link rel=next header) continues it",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["runs", "next"],
                                        "properties": {
                                            "runs": {"type": "array", "items": {"$ref": "#/components/schemas/VmRun"}},
                                            "next": _NEXT,
                                        },
                                    }
                                }
                            },
                        },
                        **_problems(400, 401, 403, 404),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "One job (scope: read)",
                    "parameters": _job_path_params(),
                    "responses": {
                        "200": {
                            "description": "the job",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["job"],
                                        "properties": {"job": job_ref},
                                    }
                                }
                            },
                        },
                        **_problems(401, 403, 404),
                    },
                }
            },
            "/v1/jobs/{job_id}/runs": {
                "get": {
                    "summary": "A job's runs with their steps (scope: read)",
                    "parameters": _job_path_params(),
                    "responses": {
                        "200": {
                            "description": "runs",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "runs": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Run"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **_problems(401, 403, 404),
                    },
                }
            },
            "/v1/jobs/{job_id}/runs/{vm}": {
                "get": {
                    "summary": "One VM's run (scope: read)",
                    "parameters": _job_path_params(_VM_PARAM),
                    "responses": {
                        "200": {
                            "description": "the run",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"run": {"$ref": "#/components/schemas/Run"}},
                                    }
                                }
                            },
                        },
                        **_problems(401, 403, 404),
                    },
                }
            },
            "/v1/jobs/{job_id}/runs/{vm}/receipt": {
                "get": {
                    "summary": "The finished run's receipt: a DSSE envelope signed by the host key (scope: read)",
                    "parameters": _job_path_params(_VM_PARAM),
                    "responses": {
                        "200": {
                            "description": "the receipt (verify it with `vmbusops receipt verify`)",
                            "content": {"application/json": {"schema": _RECEIPT}},
                        },
                        **_problems(401, 403, 404, 409),
                    },
                }
            },
            "/v1/jobs/{job_id}/runs/{vm}/transcript": {
                "get": {
                    "summary": "The run's transcript, whose SHA-256 its receipt signs (scope: read)",
                    "parameters": _job_path_params(_VM_PARAM),
                    "responses": {
                        "200": {
                            "description": "the run's records in order, one `logs --json` line each",
                            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                        },
                        **_problems(401, 403, 404, 409),
                    },
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "summary": 'Cancel a job, or one VM\'s run with {"vm": NAME} (scope: cancel)',
                    "parameters": _job_path_params(),
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"vm": {"type": "string"}},
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "cancel requested",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/CancelAnswer"}}
                            },
                        },
                        **_problems(400, 401, 403, 404, 409, 413),
                    },
                }
            },
            "/v1/jobs/{job_id}/resume": {
                "post": {
                    "summary": "Resume an interrupted job on this agent, as `vmbusops jobs resume` does (scope: submit)",
                    "description": "Its bundle is verified again first (trust, scope, expiry, the kept files): refused, the"
                    " job ends failed and nothing runs (422, ran: false). Finished steps never run again. 409 for a job"
                    " that is not interrupted, one a live process owns, or a fleet job (its controller resumes its runs).",
                    "parameters": _job_path_params(),
                    "responses": {
                        "202": {
                            "description": "resumed: the job runs again here",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "required": ["job"], "properties": {"job": job_ref}}
                                }
                            },
                        },
                        **_problems(400, 401, 403, 404, 409, 422, 503),
                    },
                }
            },
            "/v1/jobs/{job_id}/runs/{vm}/cancel": {
                "post": {
                    "summary": "Cancel one VM's run (scope: cancel)",
                    "parameters": _job_path_params(_VM_PARAM),
                    "responses": {
                        "202": {
                            "description": "cancel requested",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/CancelAnswer"}}
                            },
                        },
                        **_problems(401, 403, 404, 409),
                    },
                }
            },
            "/v1/jobs/{job_id}/records": {
                "get": {
                    "summary": "A page of a job's records after a cursor (scope: read)",
                    "parameters": _job_path_params(
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": (
                                "a cursor: the number of the last record already had (a page's `cursor`,"
                                " or a record event's id); records are numbered 1, 2, 3... in the order"
                                " the job journaled them"
                            ),
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                        {"name": "vm", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "stream",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": [
                                    "output",
                                    "error",
                                    "warning",
                                    "verbose",
                                    "debug",
                                    "information",
                                    "progress",
                                    "state",
                                ],
                            },
                        },
                    ),
                    "responses": {
                        "200": {
                            "description": "records",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["records", "cursor", "state"],
                                        "properties": {
                                            "records": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Record"},
                                            },
                                            "cursor": {"type": "string"},
                                            "state": {"type": "string"},
                                        },
                                    }
                                }
                            },
                        },
                        **_problems(400, 401, 403, 404),
                    },
                }
            },
            "/v1/jobs/{job_id}/events": {
                "get": {
                    "summary": "Live records and state changes (Server-Sent Events) until the job ends (scope: read)",
                    "description": (
                        "Events: `job` and `run` (state snapshots, no id), `record` (id = the record's number in the job,"
                        " a cursor), `end`. Records are sent once durable in the journal. "
                        "Reconnect with `Last-Event-ID` (or `?after=`) to continue without gap or repeat."
                    ),
                    "parameters": _job_path_params(
                        {"name": "after", "in": "query", "schema": {"type": "string"}},
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ),
                    "responses": {
                        "200": {
                            "description": "event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_problems(400, 401, 403, 404),
                    },
                }
            },
            "/v1/schedules": {
                "get": {
                    "summary": "Registered schedules with their next run times (scope: read)",
                    "responses": {
                        "200": {
                            "description": "schedules",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "schedules": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Schedule"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **_problems(401, 403),
                    },
                }
            },
            "/v1/schedules/{name}": {
                "delete": {
                    "summary": "Forget a schedule: none of its ticks runs from now on; a job it started goes on"
                    " (scope: cancel, over its targets)",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "removed",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["schedule", "removed"],
                                        "properties": {"schedule": {"type": "string"}, "removed": {"const": True}},
                                    }
                                }
                            },
                        },
                        **_problems(401, 403, 404),
                    },
                }
            },
            "/v1/vms": {
                "get": {
                    "summary": "The host's VMs that the caller's scope covers (scope: read)",
                    "responses": {
                        "200": {
                            "description": "VMs with their integration state",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["vms"],
                                        "properties": {
                                            "vms": {"type": "array", "items": {"$ref": "#/components/schemas/Vm"}}
                                        },
                                    }
                                }
                            },
                        },
                        **_problems(401, 403, 503),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "vmo_<id>_<secret>, from `vmbusops agent token create`",
                },
            },
            "responses": {
                "Problem": {
                    "description": "RFC 7807 problem details",
                    "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                    },
                },
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["starting", "ready", "host-down", "stopping"]},
                        "version": {"type": "string"},
                        "jobs_running": {"type": "integer"},
                        "host": {
                            "type": "object",
                            "description": "the Hyper-V host connection: up or down, since when (UTC)",
                            "properties": {
                                "name": {"type": "string"},
                                "up": {"type": "boolean"},
                                "since": {"type": "string", "format": "date-time"},
                            },
                        },
                    },
                },
                "Job": {
                    "type": "object",
                    "required": ["id", "bundle", "version", "state", "runs"],
                    "properties": {
                        "id": {"type": "integer"},
                        "bundle": {"type": "string"},
                        "version": {"type": "integer"},
                        "bundle_id": {"type": "string"},
                        "source": {"type": "string"},
                        "submitter": {
                            "type": ["string", "null"],
                            "description": "token:NAME, cert:SUBJECT, the local user of `vmbusops run`, or schedule:NAME",
                        },
                        "host": {"type": "string"},
                        "state": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "started_at": {"type": ["string", "null"], "format": "date-time"},
                        "finished_at": {"type": ["string", "null"], "format": "date-time"},
                        "owner_pid": {"type": ["integer", "null"]},
                        "cancel_requested": {"type": "boolean"},
                        "error": {
                            "type": ["string", "null"],
                            "description": "why the job ended when no run says it (a resume refused)",
                        },
                        "runs": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "targets": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Run": {
                    "type": "object",
                    "required": ["vm", "state"],
                    "properties": {
                        "vm": {"type": "string"},
                        "state": {"type": "string"},
                        "started_at": {"type": ["string", "null"], "format": "date-time"},
                        "finished_at": {"type": ["string", "null"], "format": "date-time"},
                        "records": {"type": "integer"},
                        "error": {"type": ["string", "null"]},
                        "code": {
                            "type": ["string", "null"],
                            "description": "why the run failed, a stable name (README: failure codes)",
                        },
                        "waiting": {
                            "type": ["string", "null"],
                            "description": "what the run, in progress, waits for: \"session\" while a step waits for"
                            " a PowerShell Direct session of its process, all in use ([host] max_sessions)",
                        },
                        "steps": {
                            "type": "array",
                            "items": {"type": "object", "description": "name, kind, state, code, exit_code, ..."},
                        },
                        "checkpoints": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "description": "a guarded span's checkpoint: name, type, phase, outcome"
                                " (kept, rolled-back, failed, refused), taken_at, restored_at, removed_at",
                            },
                        },
                    },
                },
                "VmRun": {
                    "type": "object",
                    "required": ["job", "bundle", "vm", "state"],
                    "properties": {
                        "job": {"type": "integer"},
                        "bundle": {"type": "string"},
                        "version": {"type": "integer"},
                        "submitter": {"type": ["string", "null"]},
                        "vm": {"type": "string"},
                        "state": {"type": "string"},
                        "current_step": {"type": ["string", "null"]},
                        "started_at": {"type": ["number", "null"]},
                        "finished_at": {"type": ["number", "null"]},
                        "records": {"type": "integer"},
                        "error": {"type": ["string", "null"]},
                    },
                },
                "Record": {
                    "type": "object",
                    "required": ["vm", "event", "stream", "seq", "time"],
                    "properties": {
                        "vm": {"type": "string"},
                        "event": {"const": "record"},
                        "seq": {"type": "integer"},
                        "time": {"type": "string", "format": "date-time", "description": "ISO 8601, UTC"},
                        "step": {"type": ["string", "null"]},
                        "stream": {"type": "string"},
                    },
                },
                "CancelAnswer": {
                    "type": "object",
                    "properties": {
                        "job": {"type": "integer"},
                        "vm": {"type": ["string", "null"]},
                        "cancel_requested": {"type": "boolean"},
                    },
                },
                "Vm": {
                    "type": "object",
                    "required": ["vm", "id", "state", "heartbeat", "guest_services", "uptime"],
                    "properties": {
                        "vm": {"type": "string"},
                        "id": {"type": "string"},
                        "state": {"type": "string"},
                        "heartbeat": {"type": ["string", "null"]},
                        "guest_services": {"type": ["boolean", "null"]},
                        "uptime": {"type": ["string", "null"]},
                    },
                },
                "Schedule": {
                    "type": "object",
                    "required": ["name", "cron", "targets"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "cron": {"type": "string"},
                        "timezone": {"type": "string"},
                        "targets": {"type": "array", "items": {"type": "string"}},
                        "next_run": {"type": ["string", "null"], "description": "null once the bundle has expired"},
                        "expired": {"type": "boolean"},
                        "last_job": {"type": ["integer", "null"]},
                    },
                },
            },
        },
    }
