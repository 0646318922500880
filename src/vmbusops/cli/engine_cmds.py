"""``vmbusops run``, ``vmbusops jobs`` and ``vmbusops logs``: jobs from signed bundles, and the journal.

``run`` verifies and accepts a bundle through the bundle layer (nothing unverified ever runs from
the command line), then runs it in this process with live progress. What can be known before the
bundle is accepted is checked first (its credential reference resolves, the host answers); the
acceptance is reserved until the job is in the journal and given back if it never got there
(:mod:`vmbusops.engine.acceptance`), so a failed ``run`` can simply be run again. ``jobs resume``
verifies the job's kept bundle again against today's trust policy before it runs anything. ``jobs`` and ``logs`` only read
the journal, so they work while a job runs in another process and after it died; ``jobs cancel``
writes a request that the owning process acts on within a second.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click
import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from vmbusops.bundle.verify import AcceptedBundle, read_unverified
from vmbusops.cli import exitcodes
from vmbusops.cli.common import host_option, load, require_run, run_trio
from vmbusops.cli.output import RecordPrinter, use_colour
from vmbusops.cli.record_lines import print_records
from vmbusops.cli.remote import agent_read_option, remote_logs, resolve_agent
from vmbusops.config import Config
from vmbusops.credentials import credential_resolver
from vmbusops.engine import (
    Engine,
    EngineEvent,
    EngineOptions,
    JobResult,
    JobSource,
    Journal,
    RecordArrived,
    State,
    acceptance,
    open_engine,
)
from vmbusops.engine.journal import RunView
from vmbusops.engine.journal_retention import journal_bytes
from vmbusops.engine.views import job_json, run_json
from vmbusops.guestops.connect import check_host, open_host
from vmbusops.records import Stream

_STATE_STYLE = {
    State.SUCCESS: "green",
    State.FAILED: "red",
    State.DELIVERY_TIMED_OUT: "red",
    State.EXECUTION_TIMED_OUT: "red",
    State.CANCELLED: "yellow",
    State.INTERRUPTED: "yellow",
    State.SKIPPED: "dim",
    State.IN_PROGRESS: "cyan",
    State.DELAYED: "blue",
    State.PENDING: "",
}


def _styled(state: State) -> str:
    style = _STATE_STYLE.get(state, "")
    return f"[{style}]{state.value}[/]" if style else state.value


def _duration(start: float | None, end: float | None) -> str:
    if start is None:
        return "-"
    return f"{(end or time.time()) - start:.1f}s"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _exit_code(result: JobResult) -> int:
    return exitcodes.OK if result.state is State.SUCCESS else exitcodes.GUEST_ERRORS


# --- live progress --------------------------------------------------------------------------------


class Progress:
    """Live progress of one job: a line per VM with its state and step, records underneath."""

    def __init__(self, *, as_json: bool, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.live_mode = not as_json and self.out.isatty()
        self.console = Console(file=self.out, highlight=False, no_color=not use_colour(self.out))
        self.printer = RecordPrinter(json_lines=as_json, out=self.out, vm_width=10)
        self.rows: dict[str, tuple[State, str | None]] = {}
        self.live: Live | None = None
        self.job_id: int | None = None

    def table(self) -> Table:
        table = Table(box=None, header_style="bold", title=f"job {self.job_id}" if self.job_id else None)
        for col in ("VM", "State", "Step"):
            table.add_column(col)
        for vm, (state, step) in self.rows.items():
            table.add_row(vm, _styled(state), step or "")
        return table

    def created(self, job_id: int) -> None:
        self.job_id = job_id
        if self.as_json:
            self._json({"event": "job", "job": job_id})
        elif not self.live_mode:
            self.out.write(f"job {job_id}\n")
        self.out.flush()

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, RecordArrived):
            if self.live_mode and self.live is not None:
                self.live.console.print(self._record_text(event), markup=False, highlight=False)
            else:
                self.printer.emit(event.record)
            return
        previous = self.rows.get(event.vm)
        self.rows[event.vm] = (event.state, event.step)
        if self.live is not None:
            self.live.update(self.table())
        elif self.as_json:
            self._json(
                {
                    "event": "run",
                    "vm": event.vm,
                    "state": event.state.value,
                    "step": event.step,
                    "error": event.error,
                }
            )
        elif previous != (event.state, event.step):
            step = f" ({event.step})" if event.step else ""
            error = f": {event.error}" if event.error else ""
            self.out.write(f"{event.vm:<10} > {event.state.value}{step}{error}\n")

    def _record_text(self, event: RecordArrived) -> str:
        buf = io.StringIO()
        RecordPrinter(out=buf, vm_width=10).emit(event.record)
        return buf.getvalue().rstrip("\n")

    def _json(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def summary(self, result: JobResult, journal: Journal) -> None:
        runs = journal.runs(result.job_id)
        if self.as_json:
            self._json(
                {
                    "event": "summary",
                    "job": result.job_id,
                    "state": result.state.value,
                    "runs": [_run_json(r, journal) for r in runs],
                    "details": result.details,
                }
            )
            return
        table = Table(box=None, header_style="bold", title=f"job {result.job_id}: {result.state.value}")
        for col in ("VM", "State", "Duration", "Records", "Error"):
            table.add_column(col)
        for r in runs:
            table.add_row(
                r.vm, _styled(r.state), _duration(r.started_at, r.finished_at), str(r.records), r.error or ""
            )
        self.console.print(table)
        for line in details_lines(result.details):
            self.console.print(line, markup=False, highlight=False)


def details_lines(details: dict[str, dict[str, Any]]) -> list[str]:
    """Per VM and dsc/patch step: resources changed and failed, drift, updates, reboot pending."""
    lines = []
    for vm, steps in details.items():
        for step, d in steps.items():
            parts = []
            for key, label in (("changed", "changed"), ("failed", "failed"), ("drifted", "drifted"), ("updates", "updates")):
                value = d.get(key)
                if isinstance(value, list):
                    parts.append(f"{label}: {', '.join(value) if value else 'none'}")
            if d.get("reboots"):
                parts.append(f"reboots: {d['reboots']}")
            parts.append(f"reboot pending: {'yes' if d.get('reboot_pending') else 'no'}")
            lines.append(f"  {vm} {step}: " + "; ".join(parts))
    return lines


def _run_json(r: RunView, journal: Journal) -> dict[str, Any]:
    return run_json(r, journal.steps(r.id))


# --- run ------------------------------------------------------------------------------------------


async def _run_source(
    config: Config,
    host: str | None,
    progress: Progress,
    *,
    bundle_file: Path | None = None,
    resume: int | None = None,
) -> int:
    journal = Journal(max_mb=config.retention.journal_max_mb)
    try:
        check_host(host, config)  # before the credential, whose lookup depends on the host
        credential_for = credential_resolver(config, host)
        if bundle_file is not None:
            # Found before the bundle is accepted, so a refusal here uses nothing up.
            _, unverified = await trio.to_thread.run_sync(read_unverified, bundle_file)
            credential_for(unverified.credential)
        async with (
            open_host(host, config=config) as hv,
            open_engine(
                hv,
                journal,
                credential_for=credential_for,
                host_name=host or config.host,
                options=EngineOptions(max_sessions=config.max_sessions),
                on_event=progress,
            ) as engine,
        ):
            with (
                Live(progress.table(), console=progress.console, transient=True)
                if progress.live_mode
                else _Null() as live
            ):
                progress.live = live if isinstance(live, Live) else None
                if bundle_file is not None:
                    result = await _run_accepted(engine, journal, bundle_file, progress)
                else:
                    assert resume is not None
                    result = await engine.resume_job(
                        resume, recheck=acceptance.recheck, on_resumed=progress.created
                    )
            progress.live = None
        progress.summary(result, journal)
        return _exit_code(result)
    finally:
        journal.close()


async def _run_accepted(engine: Engine, journal: Journal, bundle_file: Path, progress: Progress) -> JobResult:
    """Accept the bundle and run its job; the acceptance stands only once the job exists."""
    bundle: AcceptedBundle = await trio.to_thread.run_sync(acceptance.accept, bundle_file, journal)
    created = False

    def on_created(job_id: int) -> None:
        nonlocal created
        created = True
        acceptance.confirm(bundle, journal)
        progress.created(job_id)

    try:
        return await engine.run_job(JobSource.from_accepted(bundle), on_created=on_created)
    except BaseException:
        if not created:
            acceptance.release(bundle, journal)
        raise


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@click.command("run", epilog=exitcodes.EXIT_CODES_HELP)
@host_option
@click.argument("bundle_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="NDJSON: job, run-state and record lines, then a summary."
)
def run_cmd(host: str | None, bundle_file: Path, as_json: bool) -> None:
    """Verify a signed bundle and run it on this host, with live progress.

    The exit code is the job's outcome: 0 when every target succeeded, 1 when any did not.
    """
    config = load()
    progress = Progress(as_json=as_json)
    sys.exit(run_trio(lambda: _run_source(config, host, progress, bundle_file=bundle_file)))


# --- jobs -----------------------------------------------------------------------------------------


@click.group("jobs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="How many jobs, newest first."
)
@click.pass_context
def jobs(ctx: click.Context, as_json: bool, limit: int) -> None:
    """Jobs in the journal, newest first; subcommands show, cancel and resume one."""
    if ctx.invoked_subcommand is not None:
        return
    journal = Journal()
    views = journal.jobs(limit=limit)
    if as_json:
        for job in views:
            click.echo(json.dumps(job_json(job)))
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Bundle", "State", "Targets", "Runs", "Created", "Duration"):
        table.add_column(col)
    for job in views:
        runs = ", ".join(f"{n} {s}" for s, n in sorted(job.run_states.items()))
        table.add_row(
            str(job.id),
            f"{job.bundle_name} v{job.bundle_version}",
            _styled(job.state),
            str(job.targets),
            runs,
            _when(job.created_at),
            _duration(job.started_at, job.finished_at),
        )
    Console(highlight=False).print(table)
    from vmbusops.cli.prune_cmd import human_bytes

    click.echo(f"journal: {human_bytes(journal_bytes(journal.path))} ({journal.path}); vmbusops prune removes what [retention] no longer keeps")


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: int, as_json: bool) -> None:
    """Per-run states, durations, steps and output excerpts of one job."""
    journal = Journal()
    job = journal.job(job_id)
    runs = journal.runs(job_id)
    if as_json:
        click.echo(json.dumps({**job_json(job), "runs": [_run_json(r, journal) for r in runs]}))
        return
    console = Console(highlight=False)
    owner = f"pid {job.owner_pid}" + ("" if job.owner_alive else " (gone)")
    console.print(
        f"job {job.id}  {job.bundle_name} v{job.bundle_version}  {_styled(job.state)}  owner {owner}"
    )
    console.print(f"created {_when(job.created_at)}  duration {_duration(job.started_at, job.finished_at)}")
    if job.error:
        console.print(f"[red]{job.error}[/]", markup=True)
    for r in runs:
        console.print(
            f"\n[bold]{r.vm}[/]  {_styled(r.state)}  {_duration(r.started_at, r.finished_at)}"
            f"  {r.records} records" + (f"  [red]{r.error}[/]" if r.error else ""),
            markup=True,
        )
        for s in journal.steps(r.id):
            tries = f" ({s.attempts} attempts)" if s.attempts > 1 else ""
            console.print(f"  {s.name:<20} {s.kind:<10} {_styled(s.state)}{tries}")
        for line in r.excerpt:
            console.print(f"    | {line}", markup=False)


@jobs.command("cancel")
@click.argument("job_id", type=int)
@click.option("--vm", default=None, metavar="NAME", help="Cancel only this VM's run.")
def jobs_cancel(job_id: int, vm: str | None) -> None:
    """Ask the process running a job to cancel it (or one VM's run); guest pipelines are stopped."""
    journal = Journal()
    job = journal.job(job_id)
    if not job.state.active:
        click.echo(f"job {job_id} is {job.state.value}; nothing to cancel")
        return
    if journal.request_cancel(job_id, vm) == 0:
        click.echo(f"job {job_id} has no run on {vm}", err=True)
        sys.exit(exitcodes.USAGE)
    click.echo(f"cancel requested for job {job_id}" + (f" on {vm}" if vm else ""))


@jobs.command("resume", epilog=exitcodes.EXIT_CODES_HELP)
@host_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_resume(host: str | None, job_id: int, as_json: bool) -> None:
    """Finish an interrupted job according to its bundle's resume policy.

    Its bundle is verified again first, against today's trust policy; if that fails, the job ends
    failed with the reason and nothing runs (exit code 4). A job that is not interrupted (it
    finished, or a live process owns it) is a usage error (exit code 2)."""
    config = load()
    progress = Progress(as_json=as_json)
    sys.exit(run_trio(lambda: _run_source(config, host, progress, resume=job_id)))


# --- logs -----------------------------------------------------------------------------------------

@click.command("logs", epilog=exitcodes.EXIT_CODES_HELP)
@click.argument("job_id", type=int)
@click.option("--vm", default=None, metavar="NAME", help="Only this VM's records.")
@click.option(
    "--stream",
    type=click.Choice([s.value for s in Stream]),
    default=None,
    help="Only this stream (output, error, warning, verbose, debug, information, progress, state).",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@agent_read_option("the local journal")
def logs_cmd(
    job_id: int,
    vm: str | None,
    stream: str | None,
    follow: bool,
    as_json: bool,
    agent_url: str | None,
    token_file: Path | None,
) -> None:
    """A job's records from the journal (or from an agent's API with --agent), in the order they arrived."""
    if agent_url is not None:
        agent = resolve_agent(agent_url, token_file)
        sys.exit(remote_logs(agent, job_id, vm=vm, stream=stream, follow=follow, as_json=as_json))
    journal = Journal()
    if journal.job(job_id).pruned:
        click.echo(
            f"vmbusops: job {job_id}'s records were removed by retention ([retention] records_days);"
            f" its runs keep an excerpt: vmbusops jobs show {job_id}",
            err=True,
        )
    names = [r.vm for r in journal.runs(job_id)]
    require_run(vm, names, job_id)
    width = max([len(n) for n in names] + [8])
    seen = 0

    def drain() -> None:
        nonlocal seen
        while True:
            batch = journal.records(job_id, vm=vm, stream=stream, after=seen, limit=5000)
            if not batch:
                return
            print_records(batch, as_json, width)
            seen = batch[-1].n

    drain()
    if not follow:
        return

    async def main() -> int:
        while journal.job(job_id).state.active:
            await trio.sleep(0.2)
            drain()
        drain()
        return exitcodes.OK

    sys.exit(run_trio(main))
