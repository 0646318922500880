"""``vmbusops vms``, ``exec`` and ``copy``: ad-hoc work on one host's guests."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import click
from rich.table import Table

from vmbusops.cli import exitcodes
from vmbusops.cli.common import host_option, load, run_trio
from vmbusops.cli.output import RecordPrinter, console, terminal_safe
from vmbusops.config import HOST_COMMAND_RUNSPACES
from vmbusops.credentials import resolve_credential
from vmbusops.engine.engine import cancelled_here
from vmbusops.errors import ConfigError, VmbusOpsError
from vmbusops.guest_paths import EXAMPLE as GUEST_PATH_EXAMPLE
from vmbusops.guest_paths import guest_path_problem
from vmbusops.guestops.connect import check_host, open_host
from vmbusops.guestops.fanout import exec_in_guests
from vmbusops.guestops.host import GuestInvocation, HyperVHost, InvokeOutcome, VMInfo
from vmbusops.vm_names import HostNames


def vm_table(vms: list[VMInfo]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("Name", "State", "Heartbeat", "Guest services", "Id"):
        table.add_column(col)
    for vm in vms:
        gsi = {True: "enabled", False: "[yellow]disabled[/]", None: "?"}[vm.guest_services]
        state = vm.state if vm.running else f"[yellow]{vm.state}[/]"
        table.add_row(vm.name, state, vm.heartbeat or "-", gsi, vm.id)
    return table


@click.command("vms", epilog=exitcodes.EXIT_CODES_HELP)
@host_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per VM.")
def vms_cmd(host: str | None, as_json: bool) -> None:
    """List the host's VMs: state, heartbeat, Guest Service Interface."""
    config = load()

    async def main() -> int:
        async with open_host(host, config=config) as hv:
            vms = await hv.list_vms()
        if as_json:
            for vm in vms:
                click.echo(json.dumps({
                    "vm": vm.name, "id": vm.id, "state": vm.state, "heartbeat": vm.heartbeat,
                    "guest_services": vm.guest_services,
                }))
        else:
            console().print(vm_table(vms))
        return exitcodes.OK

    sys.exit(run_trio(main))


@click.command("exec", context_settings={"ignore_unknown_options": False}, epilog=exitcodes.EXIT_CODES_HELP)
@host_option
@click.option(
    "--vm", "vm_names", multiple=True, metavar="NAME",
    help="A guest to run in (repeatable): a name or a glob such as 'web*', matched case-insensitively "
    "as a bundle's targets are; each must match a VM of the host.",
)  # fmt: skip
@click.option(
    "--all", "all_vms", is_flag=True,
    help="Every running VM of the host; those not running are named as skipped (not failures).",
)  # fmt: skip
@click.option("--credential", "credential_ref", metavar="NAME", help="Guest credential reference.")
@click.option(
    "--max-concurrency", type=click.IntRange(1, 1024), default=None, metavar="N",
    help="Guests at once (default: [host] max_sessions, 32; each is a PowerShell Direct session).",
)  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Seconds per guest.")
@click.option("--json", "as_json", is_flag=True, help="NDJSON: one object per record.")
@click.option(
    "--ignore-exit-code", is_flag=True,
    help="A non-zero exit code does not fail a guest (it is still reported); error records still do.",
)  # fmt: skip
@click.argument("script", nargs=-1, required=True)
def exec_cmd(
    host: str | None,
    vm_names: tuple[str, ...],
    all_vms: bool,
    credential_ref: str | None,
    max_concurrency: int | None,
    timeout: float | None,
    as_json: bool,
    ignore_exit_code: bool,
    script: tuple[str, ...],
) -> None:
    """Run a script block in guests through PowerShell Direct and print every record live.

    \b
    Example:  vmbusops exec --vm web01 --vm 'app*' -- 'Get-Service W3SVC; Write-Verbose hi'
    A guest succeeds when its script exits 0 (`exit N` sets the code; a terminating error is 1)
    and writes no PowerShell error; a native tool's stderr lines do not fail it by themselves.
    --ignore-exit-code lets a guest whose script ended with another exit code succeed.
    --json ends each guest with a `result` line: ok, exit_code, errors, code, failure; after
    Ctrl-C, a `summary` line names the guests that succeeded, failed and were interrupted.
    A --vm that matches no VM of the host is a usage error (exit code 2), found before anything runs.
    """
    if all_vms and vm_names:
        raise ConfigError(
            "--all and --vm cannot be used together", hint="--all is every running VM; to pick some, use --vm alone"
        )
    if not vm_names and not all_vms:
        raise ConfigError("name the guests with --vm NAME (repeatable, globs allowed) or --all")
    config = load()
    text = " ".join(script)
    check_host(host, config)  # before the credential, whose lookup depends on the host
    credential = resolve_credential(credential_ref, config, host)
    concurrency = max_concurrency or config.max_sessions

    async def main() -> int:
        async with open_host(host, config=config, max_runspaces=concurrency + HOST_COMMAND_RUNSPACES) as hv:
            names = await _chosen_guests(hv, vm_names)
            printer = RecordPrinter(json_lines=as_json, vm_width=max((len(n) for n in names), default=4))
            watched = _Watched(hv)
            try:
                outcomes = await exec_in_guests(
                    cast(HyperVHost, watched), names, text, credential,
                    on_record=printer.emit, max_concurrency=concurrency, timeout=timeout,
                )  # fmt: skip
            except BaseException:
                if cancelled_here():  # Ctrl-C: every guest still gets its verdict
                    printer.flush()
                    _report_interrupted(names, watched, printer, as_json=as_json, ignore_exit_code=ignore_exit_code)
                raise
            printer.flush()
        failed = 0
        for name in names:
            outcome = outcomes.get(name)
            ok = outcome is not None and (outcome.ok_but_exit_code if ignore_exit_code else outcome.ok)
            if as_json:
                # One verdict per guest, last: a program reads it instead of judging the records
                # (a guest can end Completed yet have failed; a timed-out one has no state record).
                printer.emit_result(name, outcome, ok=ok, ignore_exit_code=ignore_exit_code)
            if not ok:
                failed += 1
                if not as_json:
                    why = outcome.why_failed(ignore_exit_code=ignore_exit_code) if outcome else "did not run"
                    click.secho(f"{name}: failed: {terminal_safe(why)}", err=True, fg="red")
        if not as_json:
            click.echo(f"{len(names) - failed} of {len(names)} guest(s) succeeded", err=True)
        return exitcodes.GUEST_ERRORS if failed else exitcodes.OK

    sys.exit(run_trio(main))


class _Watched:
    """The host, as exec_in_guests sees it, noting how far each guest got: an interrupted exec
    (Ctrl-C cancels exec_in_guests before it returns) still tells which guests had finished."""

    def __init__(self, hv: HyperVHost) -> None:
        self._hv = hv
        self.outcomes: dict[str, InvokeOutcome] = {}
        self.ended: set[str] = set()

    @asynccontextmanager
    async def invoke_in_guest(self, vm: str, *args: Any, **kwargs: Any) -> AsyncIterator[GuestInvocation]:
        self.outcomes.setdefault(vm, InvokeOutcome())
        try:
            async with self._hv.invoke_in_guest(vm, *args, **kwargs) as inv:
                self.outcomes[vm] = inv.outcome
                yield inv
        except VmbusOpsError as exc:
            self.outcomes[vm].failure = self.outcomes[vm].failure or exc
            self.ended.add(vm)
            raise
        self.ended.add(vm)


def _report_interrupted(
    names: list[str], watched: _Watched, printer: RecordPrinter, *, as_json: bool, ignore_exit_code: bool
) -> None:
    """After Ctrl-C: a guest that had finished gets its own verdict; the others are interrupted."""
    succeeded: list[str] = []
    failed: list[str] = []
    interrupted: list[str] = []
    for name in names:
        if name not in watched.ended:
            interrupted.append(name)
            if as_json:
                printer.emit_interrupted(name, started=name in watched.outcomes)
            continue
        outcome = watched.outcomes[name]
        ok = outcome.ok_but_exit_code if ignore_exit_code else outcome.ok
        (succeeded if ok else failed).append(name)
        if as_json:
            printer.emit_result(name, outcome, ok=ok, ignore_exit_code=ignore_exit_code)
    if as_json:
        printer.emit_summary(succeeded=succeeded, failed=failed, interrupted=interrupted)
        printer.flush()
    if interrupted:
        click.echo(f"interrupted: {terminal_safe(', '.join(interrupted))}", err=True)


async def _chosen_guests(hv: HyperVHost, patterns: tuple[str, ...]) -> list[str]:
    """The guests ``exec`` runs in: what each --vm name or glob matches (each VM once, spelled as
    the host spells it), or with none (``--all``) every running VM, the others named on stderr
    as skipped. A --vm that matches nothing, or an --all that finds nothing running, is a usage
    error raised before anything runs."""
    vms = await hv.list_vms()
    if not patterns:
        skipped = [vm for vm in vms if not vm.running]
        if skipped:
            listed = ", ".join(f"{vm.name} ({vm.state})" for vm in skipped)
            click.echo(f"--all: skipped, not running: {terminal_safe(listed)}", err=True)
        names = [vm.name for vm in vms if vm.running]
        if not names:
            raise ConfigError(
                "--all: no VM of the host is running, so there is nothing to run in",
                hint="start one first (Start-VM), or name VMs with --vm to try them anyway",
            )
        return names
    index = HostNames(vm.name for vm in vms)
    matched = {p: index.matching(p) for p in patterns}
    unmatched = [p for p in patterns if not matched[p]]
    if unmatched:
        raise ConfigError(
            f"no VM of the host matches {', '.join(repr(p) for p in unmatched)}",
            hint="list the host's VMs with: vmbusops vms (names and globs match case-insensitively)",
        )
    return list(dict.fromkeys(name for p in patterns for name in matched[p]))


@click.command("copy", epilog=exitcodes.EXIT_CODES_HELP)
@host_option
@click.option(
    "--vm", "vm_names", multiple=True, required=True, metavar="NAME",
    help="Target guest (repeatable): a name or a glob, as exec --vm takes; each must match a VM of the host.",
)  # fmt: skip
@click.option("--no-force", is_flag=True, help="Fail if the guest file exists instead of replacing it.")
@click.option("--enable-guest-services", is_flag=True, help="Enable the Guest Service Interface first if it is off.")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dest")
@click.option("--json", "as_json", is_flag=True, help='One JSON object per VM: {"vm", "ok", "dest", "bytes"} or {"vm", "ok": false, "code", "error"}.')
def copy_cmd(
    host: str | None, vm_names: tuple[str, ...], no_force: bool, enable_guest_services: bool, source: Path, dest: str,
    as_json: bool = False,
) -> None:
    """Copy a host file into guests with Copy-VMFile (over the VMBus; no guest network or credential)."""
    config = load()
    src = str(source.resolve())
    if not stat.S_ISREG(source.stat().st_mode):  # a FIFO, a socket, a device: Copy-VMFile reads files
        raise ConfigError(
            f"{source} is not a regular file; Copy-VMFile copies files",
            hint="copy the data into a file first, and copy that file",
        )
    size = source.stat().st_size
    problem = guest_path_problem(dest)
    if problem is not None:  # the same rule the host applies: say it once, before any VM
        raise ConfigError(
            f"guest destination {dest!r} {problem}", hint=f"use an absolute Windows path such as {GUEST_PATH_EXAMPLE}"
        )

    async def main() -> int:
        failed = 0
        async with open_host(host, config=config) as hv:
            for vm in await _chosen_guests(hv, vm_names):
                enabled = False
                try:
                    if enable_guest_services:
                        info = await hv.get_vm(vm)
                        if info.guest_services is False:
                            await hv.enable_guest_services(vm)
                            enabled = True
                            click.echo(f"{vm}: enabled the Guest Service Interface", err=True)
                    await hv.copy_to_guest(vm, src, dest, force=not no_force)
                    if as_json:
                        click.echo(json.dumps({"vm": vm, "ok": True, "source": src, "dest": dest,
                                               "bytes": size, "enabled_guest_services": enabled, "code": None}))
                    else:
                        click.echo(f"{vm}: copied {source.name} -> {dest}")
                except VmbusOpsError as exc:
                    failed += 1
                    if as_json:
                        click.echo(json.dumps({"vm": vm, "ok": False, "dest": dest, "code": exc.code.value,
                                               "error": exc.message, "hint": exc.hint}))
                    click.secho(f"vmbusops: {exc}", err=True, fg="red")
        return exitcodes.GUEST_ERRORS if failed else exitcodes.OK

    sys.exit(run_trio(main))
