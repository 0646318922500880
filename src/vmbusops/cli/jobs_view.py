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
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vmbusops.cli.output import console, terminal_safe
from vmbusops.engine.changes import WAITING_SESSION
from vmbusops.engine.states import ACTIVE, State
from vmbusops.errors import ConfigError
from vmbusops.urls import shown_url
from vmbusops.vm_names import is_glob, vms_matching
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


def why_waiting(run: dict[str, Any], runs: list[dict[str, Any]], holder: Callable[[str], int | None]) -> str | None:
    """Why a run of an active job is not going on now, or None: a step waits out a retry's
    backoff, or for a PowerShell Direct session of its process; or the run waits for its VM
    (``holder``: the other job whose run on it is in progress) or for a slot of the job's max
    concurrency."""
    for s in run.get("steps", []):
        if s["state"] == State.DELAYED.value:
            failed = f": {s['error']}" if s.get("error") else ""
            return f"waiting to retry step {s['name']} (attempt {s.get('attempts', 0)} failed{failed})"
    if run.get("waiting") == WAITING_SESSION:
        step = f"step {run['current_step']} " if run.get("current_step") else ""
        return (
            f"{step}waiting for a host session: all PowerShell Direct sessions of the process"
            " that runs the job are in use ([host] max_sessions, across its jobs)"
        )
    if run["state"] != State.DELAYED.value:
        return None
    other = holder(run["vm"])
    if other is not None:
        return f"waiting for {run['vm']}: job {other}'s run on it is in progress (one run per VM at a time)"
    going = sum(r["state"] == State.IN_PROGRESS.value for r in runs)
    return f"waiting for a slot: the job's max concurrency is reached ({going} of its runs in progress)"


def print_job(
    job: dict[str, Any],
    runs: list[dict[str, Any]],
    console: Console,
    holder: Callable[[str], int | None] = lambda vm: None,
) -> None:
    """``jobs show``: the job, then each run with its steps and output excerpt, and why a run
    that waits is waiting (:func:`why_waiting`)."""
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
        console.print(f"[red]{escape(terminal_safe(job['error']))}[/]")
    for lo in job.get("left_out", []):
        console.print(f"left out {escape(lo['vm'])}: {escape(lo['why'])}")
    for r in runs:
        error = f"  [red]{escape(terminal_safe(r['error']))}[/]" if r.get("error") else ""
        console.print(f"\n[bold]{escape(r['vm'])}[/]  {styled(r['state'])}  {duration(r)}  {r['records']} records{error}")
        waiting = why_waiting(r, runs, holder) if job["state"] in _ACTIVE else None
        if waiting is not None:
            console.print(f"  [blue]{escape(terminal_safe(waiting))}[/]")
        for s in r.get("steps", []):
            tries = f" ({s['attempts']} attempts)" if s.get("attempts", 0) > 1 else ""
            console.print(f"  {escape(s['name']):<20} {escape(s['kind']):<10} {styled(s['state'])}{tries}")
        for c in r.get("checkpoints", []):
            console.print(f"  checkpoint {escape(c['name'])}  {escape(c['type'] or '-')}  {styled(c['outcome'] or c['phase'])}")
        for line in r.get("excerpt", []):
            console.print(f"    | {terminal_safe(line)}", markup=False)


def history_table(entries: list[dict[str, Any]], *, with_vm: bool = False) -> Table:
    """``history``: a VM's runs; ``with_vm`` adds the VM's column (for a glob's many VMs)."""
    table = Table(box=None, header_style="bold")
    for col in ("Job", *(("VM",) if with_vm else ()), "Bundle", "State", "Started", "Duration", "Records", "Submitter", "Failure"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            str(e["job"]),
            *((escape(e["vm"]),) if with_vm else ()),
            escape(f"{e['bundle']} v{e['version']}"),
            styled(e["state"]),
            when(e.get("started_at")),
            duration(e),
            str(e["records"]),
            escape(e.get("submitter") or "-"),
            escape(terminal_safe(e.get("error") or "")),
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


def vm_holder(job_id: int, agent_url: str | None = None, token_file: Path | None = None) -> Callable[[str], int | None]:
    """For :func:`why_waiting`: the other job whose run on a VM is in progress (the journal's, or
    the agent's), if there is one."""

    def holder(vm: str) -> int | None:
        if agent_url is not None:
            path = f"/v1/vms/{_quote(vm)}/runs"
            entries = remote_pages(agent_url, token_file, path, "runs", {"state": State.IN_PROGRESS.value}, 10)
        else:
            entries = local_history(vm, state=State.IN_PROGRESS.value, since=None, limit=10)
        return next((e["job"] for e in entries if e["job"] != job_id), None)

    return holder


# --- a --vm glob: the jobs with a run on a VM it matches ---------------------------------------


def glob_jobs(
    pattern: str, jobs: Iterable[dict[str, Any]], runs_of: Callable[[int], list[dict[str, Any]]], limit: int
) -> list[dict[str, Any]]:
    """``jobs --vm GLOB``: of ``jobs`` (newest first, the other filters applied), the first
    ``limit`` with a run on a VM ``pattern`` matches."""
    out: list[dict[str, Any]] = []
    for job in jobs:
        if len(out) >= limit:
            break
        if vms_matching(pattern, [r["vm"] for r in runs_of(job["id"])]):
            out.append(job)
    return out


def glob_history(
    pattern: str,
    jobs: Iterable[dict[str, Any]],
    runs_of: Callable[[int], list[dict[str, Any]]],
    *,
    state: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """``history --vm GLOB``: the runs on the VMs ``pattern`` matches, newest job first, each as
    one VM's history gives it (:func:`vmbusops.engine.views.vm_run_json`)."""
    out: list[dict[str, Any]] = []
    for job in jobs:
        runs = runs_of(job["id"])
        matched = set(vms_matching(pattern, [r["vm"] for r in runs]))
        for r in (r for r in runs if r["vm"] in matched):
            if len(out) >= limit:
                return out
            if state is None or r["state"] == state:
                out.append({
                    "job": job["id"], "bundle": job["bundle"], "version": job["version"], "submitter": job["submitter"],
                    **{k: r[k] for k in ("vm", "state", "current_step", "started_at", "finished_at", "records", "error", "code")},
                })  # fmt: skip
    return out


def local_job_pages(*, state: str | None, since: float | None, submitter: str | None) -> Iterator[dict[str, Any]]:
    """Every job of the journal the filters pick, newest first, read a page at a time."""
    from vmbusops.engine.journal import JobFilter, Journal
    from vmbusops.engine.views import job_json

    journal = Journal()
    try:
        before: int | None = None
        while True:
            where = JobFilter(state=State(state) if state else None, since=since, submitter=submitter, before=before)
            page = journal.jobs(limit=500, where=where)
            yield from (job_json(j) for j in page)
            if len(page) < 500:
                return
            before = page[-1].id
    finally:
        journal.close()


def local_runs(job_id: int) -> list[dict[str, Any]]:
    from vmbusops.engine.journal import Journal
    from vmbusops.engine.views import run_json

    journal = Journal()
    try:
        return [run_json(r, []) for r in journal.runs(job_id)]
    finally:
        journal.close()


def remote_job_pages(agent_url: str, token_file: Path | None, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Every job of the agent the filters pick (and the token may see), newest first."""
    cursor: str | None = None
    while True:
        page = remote_get(agent_url, token_file, "/v1/jobs", {**params, "limit": "500", **({"cursor": cursor} if cursor else {})})
        yield from page["jobs"]
        cursor = page.get("next")
        if not cursor or not page["jobs"]:
            return


def remote_runs(agent_url: str, token_file: Path | None) -> Callable[[int], list[dict[str, Any]]]:
    return lambda job_id: list(remote_get(agent_url, token_file, f"/v1/jobs/{job_id}/runs", {})["runs"])


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


def remote_resume(agent_url: str | None, token_file: Path | None, job_id: int) -> tuple[dict[str, Any], str]:
    """``jobs resume --agent``: the agent resumes the interrupted job; the job as it then reads,
    and the agent's URL as it may be shown.
    Refused: not interrupted (exit 2), its bundle judged again and rejected (exit 4: the job has
    ended failed, nothing ran)."""
    from vmbusops.cli.remote import problem_of, resolve_agent, run_client

    agent = resolve_agent(agent_url, token_file)
    got: list[dict[str, Any]] = []

    async def post() -> int:
        async with agent.client() as client:  # no answer at all: run_client says so, naming the URL
            response = await client.post(f"/v1/jobs/{job_id}/resume")
        if response.status_code != 202:
            raise problem_of(response)
        got.append(response.json()["job"])
        return 0

    run_client(post)
    return got[0], shown_url(agent.url)


# --- history ------------------------------------------------------------------------------------


def _agent_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    from vmbusops.cli.remote import agent_read_option

    return agent_read_option("the local journal")(fn)  # type: ignore[no-any-return]


@click.command("history")
@click.option(
    "--vm", required=True, metavar="NAME",
    help="The VM whose runs to show, across jobs: a name, or a glob such as 'web*' (matched case-insensitively, "
    "as exec --vm is) for the runs of every VM it matches.",
)  # fmt: skip
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
    if is_glob(vm):
        if agent_url is not None:
            since_param = {"since": iso(after)} if after is not None else {}
            jobs, runs_of = remote_job_pages(agent_url, token_file, since_param), remote_runs(agent_url, token_file)
        else:
            jobs, runs_of = local_job_pages(state=None, since=after, submitter=None), local_runs
        entries = glob_history(vm, jobs, runs_of, state=state, limit=limit)
    elif agent_url is not None:
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
        where = f"a VM matching {vm!r}" if is_glob(vm) else vm
        click.echo(f"no runs on {terminal_safe(where)}" + (" matching the filters" if state or since else ""))
        return
    out_console().print(history_table(entries, with_vm=is_glob(vm)))


def _quote(vm: str) -> str:
    from urllib.parse import quote

    if not vm.strip():
        raise ConfigError("--vm needs a VM name")
    return quote(vm, safe="")


__all__ = [
    "filter_options",
    "glob_jobs",
    "history_cmd",
    "jobs_table",
    "local_job",
    "local_job_pages",
    "local_jobs",
    "local_runs",
    "out_console",
    "print_job",
    "remote_cancel",
    "remote_get",
    "remote_job_pages",
    "remote_pages",
    "remote_runs",
    "vm_holder",
    "why_waiting",
]
