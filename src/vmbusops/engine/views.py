"""The JSON shapes of jobs and runs, one definition for ``vmbusops jobs --json`` and the agent's API.

Times are ISO 8601 UTC text (:mod:`vmbusops.times`); the journal keeps seconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmbusops.engine.journal import JobView, RunView, StepView, VmRunView
from vmbusops.engine.journal_rows import CheckpointView
from vmbusops.times import iso_time_or_none as _iso


def job_json(job: JobView, targets: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "bundle": job.bundle_name,
        "version": job.bundle_version,
        "bundle_id": job.bundle_id,
        "source": job.source,
        "submitter": job.submitter,
        "host": job.host,
        "state": job.state.value,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "owner_pid": job.owner_pid,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
        "runs": job.run_states,
    }
    if job.left_out:
        out["left_out"] = [lo.to_json() for lo in job.left_out]
    if targets is not None:
        out["targets"] = targets
    return out


def run_json(r: RunView, steps: list[StepView], checkpoints: Sequence[CheckpointView] = ()) -> dict[str, Any]:
    """``checkpoints``: the run's guarded spans (:mod:`.guard`), as its receipt lists them."""
    return {
        "vm": r.vm,
        "state": r.state.value,
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
        "current_step": r.current_step,
        "records": r.records,
        "error": r.error,
        "code": r.code,
        "excerpt": r.excerpt,
        "cancel_requested": r.cancel_requested,
        "waiting": r.waiting,
        "steps": [
            {
                "name": s.name,
                "kind": s.kind,
                "state": s.state.value,
                "attempts": s.attempts,
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
                "error": s.error,
                "code": s.code,
                "exit_code": s.exit_code,
            }
            for s in steps
        ],
        "checkpoints": [c.to_json() for c in checkpoints],
    }


def vm_run_json(entry: VmRunView) -> dict[str, Any]:
    """One run of a VM's history (``vmbusops history``, ``GET /v1/vms/{vm}/runs``)."""
    r = entry.run
    return {
        "job": r.job_id,
        "bundle": entry.bundle_name,
        "version": entry.bundle_version,
        "submitter": entry.submitter,
        "vm": r.vm,
        "state": r.state.value,
        "current_step": r.current_step,
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
        "records": r.records,
        "error": r.error,
        "code": r.code,
    }
