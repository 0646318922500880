"""What ``vmbusops jobs``, ``jobs show``, ``jobs cancel`` and ``history`` print, from the local
journal or from an agent (``--agent URL``) alike.

Both sources give the same JSON shapes (:mod:`vmbusops.engine.views`: the journal's views as the
API serves them), so each listing is rendered once, from those shapes, whichever way it was read.
A job or run that is not active is never measured against the clock: its duration ends when it
stopped (see :mod:`vmbusops.engine.journal_history`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmbusops.cli.output import console
from vmbusops.engine.states import ACTIVE, State
from vmbusops.errors import ConfigError
from vmbusops.when import parse_since

_ACTIVE = {s.value for s in ACTIVE}
_STYLE = {
    "success": "green",
    "failed": "red",
    "delivery-timed-out": "red",
    "execution-timed-out": "red",
    "cancelled": "yellow",
    "interrupted": "yellow",
    "skipped": "dim",
    "rolled-back": "magenta",
    "in-progress": "cyan",
    "delayed": "blue",
}

#: The states a job or run can be in, for --state.
STATES = [s.value for s in State]


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--vm, --state, --since and --limit, as ``jobs`` and ``history`` take them."""
    fn = click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500), help="How many, newest first.")(fn)
    fn = click.option(
        "--since", default=None, metavar="WHEN",
        help="Only those created since WHEN: an ISO date or date-time (2026-11-30, 2026-11-30T08:00Z) or an age (30m, 2h, 3d).",
    )(fn)  # fmt: skip
    return click.option(
        "--state", default=None, metavar="STATE", callback=_check_state,
        help=f"Only those in this state: {', '.join(STATES)}.",
    )(fn)  # fmt: skip


def _check_state(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in STATES:
        raise ConfigError(f"--state {value[:40]!r} is not a state: use one of {', '.join(STATES)}")
    return value


def since_epoch(text: str | None) -> float | None:
    return None if text is None else parse_since(text, time.time())


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def epoch(value: Any) -> float | None:
    """A time as the JSON shapes carry it (epoch seconds or ISO 8601 text)."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def styled(state: str) -> str:
    style = _STYLE.get(state)
    return f"[{style}]{escape(state)}[/]" if style else escape(state)


def duration(item: dict[str, Any]) -> str:
    start, end = epoch(item.get("started_at")), epoch(item.get("finished_at"))
    if start is None or (end is None and item.get("state") not in _ACTIVE):
        return "-"
    return f"{(end if end is not None else time.time()) - start:.1f}s"


def when(value: Any) -> str:
    t = epoch(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def out_console() -> Console:
    """The console the listings print on: fitted to a terminal, never wrapped or cut elsewhere."""
    return console(highlight=False)


def print_json_lines(items: Iterable[dict[str, Any]]) -> None:
    for item in items:
        click.echo(json.dumps(item))


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Bundle", "State", "Targets", "Runs", "Submitter", "Created", "Duration"):
        table.add_column(col)
    for job in jobs:
        runs: dict[str, int] = job.get("runs") or {}
        table.add_row(
            str(job["id"]),
            escape(f"{job['bundle']} v{job['version']}"),
            styled(job["state"]),
            str(sum(runs.values())),
            escape(", ".join(f"{n} {s}" for s, n in sorted(runs.items()))),
            escape(job.get("submitter") or "-"),
            when(job.get("created_at")),
            duration(job),
        )
    return table


def print_job(job: dict[str, Any], runs: list[dict[str, Any]], console: Console) -> None:
    """``jobs show``: the job, then each run with its steps and output excerpt."""
    owner = job.get("owner_pid")
    head = f"job {job['id']}  {escape(job['bundle'])} v{job['version']}  {styled(job['state'])}"
    if owner is not None:
        head += f"  owner pid {owner}" + (" (gone)" if job["state"] == "interrupted" else "")
    console.print(head)
    console.print(
        f"submitter {escape(job.get('submitter') or '-')}  created {when(job.get('created_at'))}"
        f"  duration {duration(job)}"
    )
    if job.get("error"):
        console.print(f"[red]{escape(job['error'])}[/]")
    for lo in job.get("left_out", []):
        console.print(f"left out {escape(lo['vm'])}: {escape(lo['why'])}")
    for r in runs:
        error = f"  [red]{escape(r['error'])}[/]" if r.get("error") else ""
        console.print(f"\n[bold]{escape(r['vm'])}[/]  {styled(r['state'])}  {duration(r)}  {r['records']} records{error}")
        for s in r.get("steps", []):
            tries = f" ({s['attempts']} attempts)" if s.get("attempts", 0) > 1 else ""
            console.print(f"  {escape(s['name']):<20} {escape(s['kind']):<10} {styled(s['state'])}{tries}")
        for c in r.get("checkpoints", []):
            console.print(f"  checkpoint {escape(c['name'])}  {escape(c['type'] or '-')}  {styled(c['outcome'] or c['phase'])}")
        for line in r.get("excerpt", []):
            console.print(f"    | {line}", markup=False)


def history_table(entries: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("Job", "Bundle", "State", "Started", "Duration", "Records", "Submitter", "Failure"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            str(e["job"]),
            escape(f"{e['bundle']} v{e['version']}"),
            styled(e["state"]),
            when(e.get("started_at")),
            duration(e),
            str(e["records"]),
            escape(e.get("submitter") or "-"),
            escape(e.get("error") or ""),
        )
    return table


# --- reading: the journal, or an agent ---------------------------------------------------------


def local_jobs(
    *, vm: str | None, state: str | None, since: float | None, submitter: str | None, limit: int
) -> list[dict[str, Any]]:
    from vmbusops.engine.journal import JobFilter, Journal
    from vmbusops.engine.views import job_json

    journal = Journal()
    try:
        where = JobFilter(vm=vm, state=State(state) if state else None, since=since, submitter=submitter)
        return [job_json(j) for j in journal.jobs(limit=limit, where=where)]
    finally:
        journal.close()


def local_history(vm: str, *, state: str | None, since: float | None, limit: int) -> list[dict[str, Any]]:
    from vmbusops.engine.journal import Journal
    from vmbusops.engine.views import vm_run_json

    journal = Journal()
    try:
        entries = journal.vm_history(vm, limit=limit, since=since, state=State(state) if state else None)
        return [vm_run_json(e) for e in entries]
    finally:
        journal.close()


def local_job(job_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from vmbusops.engine.journal import Journal
    from vmbusops.engine.views import job_json, run_json

    journal = Journal()
    try:
        job = journal.job(job_id)
        runs = journal.runs(job_id)
        return job_json(job), [run_json(r, journal.steps(r.id), journal.checkpoints(r.id)) for r in runs]
    finally:
        journal.close()


def remote_get(agent_url: str | None, token_file: Path | None, path: str, params: dict[str, str]) -> dict[str, Any]:
    """One GET of an agent's API; our errors (one line, exit code) on refusal or no answer."""
    import httpx

    from vmbusops.cli.remote import problem_of, resolve_agent, run_client, transport_error

    agent = resolve_agent(agent_url, token_file)
    answer: dict[str, Any] = {}

    async def fetch() -> int:
        async with agent.client() as client:
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError as exc:
                raise transport_error(exc, agent.url) from exc
        if response.status_code != 200:
            raise problem_of(response)
        answer.update(response.json())
        return 0

    run_client(fetch)
    return answer


def remote_pages(
    agent_url: str | None, token_file: Path | None, path: str, key: str, params: dict[str, str], limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` items of a paged listing (``next`` cursors), newest first."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(items) < limit:
        page_params = {**params, "limit": str(min(500, limit - len(items)))}
        if cursor is not None:
            page_params["cursor"] = cursor
        page = remote_get(agent_url, token_file, path, page_params)
        items += page[key]
        cursor = page.get("next")
        if not cursor or not page[key]:
            break
    return items[:limit]


def remote_cancel(agent_url: str | None, token_file: Path | None, job_id: int, vm: str | None) -> str:
    """``jobs cancel --agent``: what to print (a job that is not active is said so, exit 0)."""
    import httpx

    from vmbusops.cli.remote import problem_of, resolve_agent, run_client, transport_error

    agent = resolve_agent(agent_url, token_file)
    said: list[str] = []

    async def post() -> int:
        async with agent.client() as client:
            try:
                response = await client.post(f"/v1/jobs/{job_id}/cancel", json={"vm": vm} if vm else None)
            except httpx.HTTPError as exc:
                raise transport_error(exc, agent.url) from exc
        if response.status_code == 409:
            state = response.json().get("state", "not active")
            said.append(f"job {job_id} is {state}; nothing to cancel")
        elif response.status_code == 202:
            said.append(f"cancel requested for job {job_id}" + (f" on {vm}" if vm else ""))
        else:
            raise problem_of(response)
        return 0

    run_client(post)
    return said[0]


# --- history ------------------------------------------------------------------------------------


def _agent_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    from vmbusops.cli.remote import agent_read_option

    return agent_read_option("the local journal")(fn)  # type: ignore[no-any-return]


@click.command("history")
@click.option("--vm", required=True, metavar="NAME", help="The VM whose runs to show, across jobs.")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@_agent_options
def history_cmd(
    vm: str,
    state: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    agent_url: str | None,
    token_file: Path | None,
) -> None:
    """One VM's runs across jobs, newest first: job, bundle, state, start, duration, failure."""
    after = since_epoch(since)
    if agent_url is not None:
        params = {"state": state or "", "since": iso(after) if after is not None else ""}
        entries = remote_pages(
            agent_url, token_file, f"/v1/vms/{_quote(vm)}/runs", "runs", {k: v for k, v in params.items() if v}, limit
        )
    else:
        entries = local_history(vm, state=state, since=after, limit=limit)
    if as_json:
        print_json_lines(entries)
        return
    if not entries:
        click.echo(f"no runs on {vm}" + (" matching the filters" if state or since else ""))
        return
    out_console().print(history_table(entries))


def _quote(vm: str) -> str:
    from urllib.parse import quote

    if not vm.strip():
        raise ConfigError("--vm needs a VM name")
    return quote(vm, safe="")


__all__ = [
    "filter_options",
    "history_cmd",
    "jobs_table",
    "local_job",
    "local_jobs",
    "out_console",
    "print_job",
    "remote_cancel",
    "remote_get",
    "remote_pages",
]
