"""``vmbusops run``, ``vmbusops jobs`` and ``vmbusops logs``: jobs from signed bundles, and the journal.

``run`` verifies and accepts a bundle through the bundle layer (nothing unverified ever runs from
the command line), then runs it in this process with live progress. What can be known before the
bundle is accepted is checked first (its credential reference resolves, the host answers); the
acceptance is reserved until the job is in the journal and given back if it never got there
(:mod:`vmbusops.engine.acceptance`), so a failed ``run`` can simply be run again. ``jobs resume``
verifies the job's kept bundle again against today's trust policy before it runs anything. ``jobs`` and ``logs`` only read
the journal, so they work while a job runs in another process and after it died; ``jobs cancel``
writes a request that the owning process acts on within a second. With ``--agent URL`` the readers
and ``jobs cancel`` ask an agent's API instead (:mod:`.jobs_view`, :mod:`.remote`). Ctrl-C during
``run`` or ``jobs resume`` leaves the job interrupted in the journal and prints where each run
stands and the command that finishes it.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
import trio
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vmbusops.bundle.verify import AcceptedBundle, read_unverified
from vmbusops.cli import exitcodes
from vmbusops.cli.common import host_option, load, require_run, run_trio
from vmbusops.cli.jobs_view import (
    filter_options,
    glob_jobs,
    iso,
    jobs_table,
    local_job,
    local_job_pages,
    local_jobs,
    local_runs,
    out_console,
    print_job,
    print_json_lines,
    remote_cancel,
    remote_get,
    remote_job_pages,
    remote_pages,
    remote_resume,
    remote_runs,
    since_epoch,
    vm_holder,
)
from vmbusops.cli.output import RecordPrinter, console, terminal_safe, use_colour
from vmbusops.cli.record_lines import print_records
from vmbusops.cli.remote import agent_read_option, remote_logs, resolve_agent, say_interrupted
from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, credential_resolver
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
from vmbusops.engine.engine import cancelled_here
from vmbusops.engine.journal import READ_PAGE, RunView, journal_path
from vmbusops.engine.journal_retention import journal_bytes
from vmbusops.engine.views import run_json
from vmbusops.errors import ConfigError
from vmbusops.guestops.connect import check_host, open_host
from vmbusops.heap import settle
from vmbusops.receipts import receipt_hook
from vmbusops.records import Stream
from vmbusops.times import iso_time
from vmbusops.vm_names import is_glob

#: A job id: SQLite's integers are 64-bit, so a larger number is a usage error, not an overflow.
JOB_ID = click.IntRange(1, 2**63 - 1)

_STATE_STYLE = {
    State.SUCCESS: "green",
    State.FAILED: "red",
    State.DELIVERY_TIMED_OUT: "red",
    State.EXECUTION_TIMED_OUT: "red",
    State.CANCELLED: "yellow",
    State.INTERRUPTED: "yellow",
    State.SKIPPED: "dim",
    State.ROLLED_BACK: "magenta",
    State.IN_PROGRESS: "cyan",
    State.DELAYED: "blue",
    State.PENDING: "",
}


def _state_text(state: State) -> Text:
    """The state as a table cell: styled text, not markup. A live table is also drawn by a print
    of guest text with markup off, and a cell of markup would then show ``[red]failed[/]``."""
    return Text(state.value, style=_STATE_STYLE.get(state, ""))


def _duration(start: float | None, end: float | None, state: State) -> str:
    """How long it took, or has taken so far while it is active; "-" if it never started."""
    if start is None or (end is None and not state.active):
        return "-"
    return f"{(end or time.time()) - start:.1f}s"


def _runs_table(title: str, runs: list[RunView], *, interrupted: bool = False) -> Table:
    """A job's runs as ``run`` ends with them: VM, state, duration, records and why a run failed;
    for an interrupted job, where each run stood (its step) instead of the error. Cells are
    styled text, never markup, so guest and bundle text is shown as it is."""
    table = Table(box=None, header_style="bold", title=title)
    for col in ("VM", "State", *(("Step",) if interrupted else ()), "Duration", "Records", *(() if interrupted else ("Error",))):
        table.add_column(col)
    for r in runs:
        step = (Text(r.current_step or ""),) if interrupted else ()
        error = () if interrupted else (Text(terminal_safe(r.error or "")),)
        table.add_row(Text(r.vm), _state_text(r.state), *step, _duration(r.started_at, r.finished_at, r.state),
                      str(r.records), *error)  # fmt: skip
    return table


def _exit_code(result: JobResult) -> int:
    return exitcodes.job_exit_code([s.value for s in result.runs.values()])


# --- live progress --------------------------------------------------------------------------------


class Progress:
    """Live progress of one job: a line per VM with its state and step, records underneath."""

    def __init__(self, *, as_json: bool, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.live_mode = not as_json and self.out.isatty()
        self.console = console(self.out, highlight=False, no_color=not use_colour(self.out))
        self.printer = RecordPrinter(json_lines=as_json, out=self.out, vm_width=10)
        #: Under the live table, records are lines of text the table is printed around; one
        #: printer for them all, so an activity's progress gets a line per tenth, not per record.
        self._live_buffer = io.StringIO()
        self._live_printer = RecordPrinter(out=self._live_buffer, vm_width=10)
        self.rows: dict[str, tuple[State, str | None]] = {}
        self.live: Live | None = None
        self.job_id: int | None = None

    def table(self) -> Table:
        table = Table(box=None, header_style="bold", title=f"job {self.job_id}" if self.job_id else None)
        for col in ("VM", "State", "Step"):
            table.add_column(col)
        for vm, (state, step) in self.rows.items():
            table.add_row(Text(vm), _state_text(state), Text(step or ""))
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
                text = self._record_text(event)
                if text is not None:
                    self.live.console.print(text, markup=False, highlight=False)
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
                    "time": iso_time(time.time()),
                    "state": event.state.value,
                    "step": event.step,
                    "error": event.error,
                    "code": event.code,
                }
            )
        elif previous != (event.state, event.step):
            step = f" ({event.step})" if event.step else ""
            error = f": {terminal_safe(event.error)}" if event.error else ""
            self.out.write(f"{event.vm:<10} > {event.state.value}{step}{error}\n")

    def _record_text(self, event: RecordArrived) -> str | None:
        """The record's lines for the live view (None: a progress record that gets no line)."""
        buf = self._live_buffer
        buf.seek(0)
        buf.truncate()
        self._live_printer.emit(event.record)
        return buf.getvalue().rstrip("\n") or None

    def _json(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def summary(self, result: JobResult, journal: Journal) -> None:
        runs = journal.runs(result.job_id)
        left_out = journal.job(result.job_id).left_out
        if self.as_json:
            self._json(
                {
                    "event": "summary",
                    "job": result.job_id,
                    "state": result.state.value,
                    "runs": [_run_json(r, journal) for r in runs],
                    "details": result.details,
                    **({"left_out": [lo.to_json() for lo in left_out]} if left_out else {}),
                }
            )
            return
        self.console.print(_runs_table(f"job {result.job_id}: {result.state.value}", runs))
        for lo in left_out:
            self.console.print(f"left out {terminal_safe(lo.vm)}: {lo.why}", markup=False, highlight=False)
        for line in details_lines(result.details):
            self.console.print(line, markup=False, highlight=False)


    def interrupted(self, job_id: int, journal: Journal) -> None:
        """The job was interrupted here (Ctrl-C): where each VM's run stands, and how to finish it."""
        runs = journal.runs(job_id)
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.state.value] = counts.get(r.state.value, 0) + 1
        left = counts.get(State.INTERRUPTED.value, 0)
        resume = f"vmbusops jobs resume {job_id}"
        if self.as_json:
            self._json(
                {
                    "event": "summary",
                    "job": job_id,
                    "state": State.INTERRUPTED.value,
                    "runs": [_run_json(r, journal) for r in runs],
                    "interrupted": left,
                    **({"resume": resume} if left else {}),
                }
            )
            return
        self.console.print(_runs_table(f"job {job_id}: interrupted", runs, interrupted=True))
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        self.console.print(f"job {job_id}: {states}", markup=False, highlight=False)
        if left:
            runs_word = "run" if left == 1 else "runs"
            self.console.print(f"{left} {runs_word} interrupted; resume with: {resume}", markup=False, highlight=False)
        self.out.flush()


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
        try:
            result = await _run_engine(config, host, progress, journal, credential_for, bundle_file, resume)
        except BaseException:
            # Ctrl-C (or SIGTERM): the engine wrote the job down as interrupted; say what stands.
            if cancelled_here() and progress.job_id is not None:
                progress.interrupted(progress.job_id, journal)
            raise
        progress.summary(result, journal)
        return _exit_code(result)
    finally:
        journal.close()


async def _run_engine(
    config: Config,
    host: str | None,
    progress: Progress,
    journal: Journal,
    credential_for: Callable[[str], GuestCredential],
    bundle_file: Path | None,
    resume: int | None,
) -> JobResult:
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
        engine.after_run = receipt_hook(journal)  # each finished run's signed receipt
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
    return result


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
        return await engine.run_job(JobSource.from_accepted(bundle, submitter=local_user()), on_created=on_created)
    except BaseException:
        if not created:
            acceptance.release(bundle, journal)
        raise


def local_user() -> str:
    """Who runs this command, as a job's submitter: the operating system's user name."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


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

    The exit code is the job's outcome: 0 when every target succeeded; 5 when every target that
    did not was rolled back to its checkpoint (a guarded change failed and was put back); else 1.
    """
    config = load()
    progress = Progress(as_json=as_json)
    sys.exit(run_trio(lambda: _run_source(config, host, progress, bundle_file=bundle_file)))


# --- jobs -----------------------------------------------------------------------------------------


@click.group("jobs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.option(
    "--vm", default=None, metavar="NAME",
    help="Only jobs with a run on this VM, or on a VM a glob such as 'web*' matches (case-insensitively, as exec "
    "--vm matches); its history: vmbusops history --vm NAME.",
)  # fmt: skip
@filter_options
@click.option("--submitter", default=None, metavar="WHO", help="Only jobs submitted by WHO (token:NAME, cert:SUBJECT, a user, schedule:NAME).")
@agent_read_option("the local journal")
@click.pass_context
def jobs(
    ctx: click.Context,
    as_json: bool,
    vm: str | None,
    state: str | None,
    since: str | None,
    limit: int,
    submitter: str | None,
    agent_url: str | None,
    token_file: Path | None,
) -> None:
    """Jobs in the journal (or an agent's, with --agent), newest first; subcommands show, cancel and resume one."""
    if ctx.invoked_subcommand is not None:
        return
    after = since_epoch(since)
    if vm is not None and is_glob(vm):  # the jobs with a run on a VM it matches, as exec --vm matches
        if agent_url is not None:
            params = {"state": state, "since": iso(after) if after is not None else None, "submitter": submitter}
            found = remote_job_pages(agent_url, token_file, {k: v for k, v in params.items() if v})
            views = glob_jobs(vm, found, remote_runs(agent_url, token_file), limit)
        else:
            views = glob_jobs(vm, local_job_pages(state=state, since=after, submitter=submitter), local_runs, limit)
    elif agent_url is not None:
        params = {"vm": vm, "state": state, "since": iso(after) if after is not None else None, "submitter": submitter}
        views = remote_pages(agent_url, token_file, "/v1/jobs", "jobs", {k: v for k, v in params.items() if v}, limit)
    else:
        views = local_jobs(vm=vm, state=state, since=after, submitter=submitter, limit=limit)
    if as_json:
        print_json_lines(views)
        return
    out_console().print(jobs_table(views))
    if agent_url is None:
        from vmbusops.cli.prune_cmd import human_bytes

        path = journal_path()
        click.echo(f"journal: {human_bytes(journal_bytes(path))} ({path}); vmbusops prune removes what [retention] no longer keeps")


@jobs.command("show")
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True)
@agent_read_option("the local journal")
def jobs_show(job_id: int, as_json: bool, agent_url: str | None, token_file: Path | None) -> None:
    """Per-run states, durations, steps and output excerpts of one job."""
    if agent_url is not None:
        job = remote_get(agent_url, token_file, f"/v1/jobs/{job_id}", {})["job"]
        runs = remote_get(agent_url, token_file, f"/v1/jobs/{job_id}/runs", {})["runs"]
    else:
        job, runs = local_job(job_id)
    if as_json:
        click.echo(json.dumps({**job, "runs": runs}))
        return
    print_job(job, runs, out_console(), vm_holder(job_id, agent_url, token_file))


@jobs.command("cancel")
@click.argument("job_id", type=JOB_ID)
@click.option("--vm", default=None, metavar="NAME", help="Cancel only this VM's run.")
@agent_read_option("the local journal")
def jobs_cancel(job_id: int, vm: str | None, agent_url: str | None, token_file: Path | None) -> None:
    """Ask the process running a job to cancel it (or one VM's run); guest pipelines are stopped."""
    if agent_url is not None:
        click.echo(remote_cancel(agent_url, token_file, job_id, vm))
        return
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
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True)
@agent_read_option("this process, which runs it to its end")
def jobs_resume(host: str | None, job_id: int, as_json: bool, agent_url: str | None, token_file: Path | None) -> None:
    """Finish an interrupted job according to its bundle's resume policy.

    Its bundle is verified again first, against today's trust policy; if that fails, the job ends
    failed with the reason and nothing runs (exit code 4). A job that is not interrupted (it
    finished, or a live process owns it) is a usage error (exit code 2). It resumes on the host the
    job ran on (a --host naming another is refused: its VMs are other machines). With --agent, the agent
    resumes it (the token needs the submit scope) and this returns at once: follow it with
    logs -f --agent; --json prints the job as the agent answers it."""
    if agent_url is not None:
        if host is not None:
            raise ConfigError(
                "--host and --agent do not go together", hint="the agent resumes the job on its own host"
            )
        job, url = remote_resume(agent_url, token_file, job_id)
        if as_json:
            click.echo(json.dumps(job))
        else:
            click.echo(f"job {job_id} resumed by the agent; follow it with: vmbusops logs {job_id} -f --agent {url}")
        return
    config = load()
    if host is None:  # the job's own host: its runs are that host's VMs
        journal = Journal(max_mb=config.retention.journal_max_mb)
        try:
            host = journal.job(job_id).host
        finally:
            journal.close()
    progress = Progress(as_json=as_json)
    sys.exit(run_trio(lambda: _run_source(config, host, progress, resume=job_id)))


# --- logs -----------------------------------------------------------------------------------------

@click.command("logs", epilog=exitcodes.EXIT_CODES_HELP)
@click.argument("job_id", type=JOB_ID)
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
    settle()  # a big job's pages must not each risk a full collection of the imported program

    def page() -> bool:
        """Print the next page of records; False when there was none."""
        nonlocal seen
        batch = journal.records(job_id, vm=vm, stream=stream, after=seen, limit=READ_PAGE)
        if batch:
            print_records(batch, as_json, width)
            seen = batch[-1].n
        return bool(batch)

    if not follow:
        while page():
            pass
        return

    async def main() -> int:
        # Under the signal watcher from the first page, looked at between pages: a Ctrl-C while
        # a big job is caught up ends as one while it is followed does.
        while True:
            job = journal.job(job_id)  # before reading: what came before the end is read
            while page():
                await trio.lowlevel.checkpoint()
            if not job.state.active:
                say_interrupted(job_id, job.state.value)
                return exitcodes.OK
            await trio.sleep(0.2)

    sys.exit(run_trio(main, saying="interrupted; the job goes on where it runs"))
