"""``vmbusops prune``: apply the retention of ``[retention]`` now (the agent does it periodically).

See :mod:`vmbusops.retention` for what goes and what never does.
"""

from __future__ import annotations

import json
import time

import click

from vmbusops.cli.common import load
from vmbusops.engine.journal import Journal, journal_path
from vmbusops.engine.journal_retention import journal_bytes
from vmbusops.retention import PrunePlan, prune


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _ids(ids: tuple[int, ...]) -> str:
    shown = ", ".join(map(str, ids[:20]))
    return shown + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


def plan_lines(plan: PrunePlan, *, dry_run: bool) -> list[str]:
    verb = "would remove" if dry_run else "removed"
    if plan.empty:
        return ["nothing to remove"]
    lines = []
    if plan.record_jobs:
        lines.append(
            f"{verb}: {plan.records} records of {len(plan.record_jobs)} finished job(s): {_ids(plan.record_jobs)}"
        )
    if plan.delete_jobs:
        lines.append(f"{verb}: {len(plan.delete_jobs)} finished job(s): {_ids(plan.delete_jobs)}")
    if plan.bundle_dirs:
        lines.append(
            f"{verb}: {len(plan.bundle_dirs)} bundle folder(s), {human_bytes(plan.bundle_bytes)}:"
            f" {', '.join(d.name for d in plan.bundle_dirs)}"
        )
    if plan.stale_uploads:
        lines.append(
            f"{verb}: {len(plan.stale_uploads)} upload(s) left by a stopped agent, {human_bytes(plan.upload_bytes)}"
        )
    return lines


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: what went (or would go).")
def prune_cmd(dry_run: bool, as_json: bool) -> None:
    """Remove what [retention] in config.toml no longer keeps: old records, old finished jobs, and
    bundle files no unfinished job or schedule needs. Unfinished (interrupted) jobs are never touched."""
    config = load()
    # An existing journal is opened without writing its schema, so pruning works on a full disk.
    journal = Journal(readonly=journal_path().exists())
    try:
        plan = prune(journal, config.retention, now=time.time(), dry_run=dry_run)
        size = journal_bytes(journal.path)
    finally:
        journal.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "record_jobs": list(plan.record_jobs),
                    "records": plan.records,
                    "deleted_jobs": list(plan.delete_jobs),
                    "bundle_dirs": [str(d) for d in plan.bundle_dirs],
                    "bundle_bytes": plan.bundle_bytes,
                    "stale_uploads": [str(u) for u in plan.stale_uploads],
                    "upload_bytes": plan.upload_bytes,
                    "journal_bytes": size,
                }
            )
        )
        return
    for line in plan_lines(plan, dry_run=dry_run):
        click.echo(line)
    click.echo(f"journal: {human_bytes(size)} ({journal.path})")
