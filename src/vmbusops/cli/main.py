"""The ``vmbusops`` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

import click

from vmbusops import __version__
from vmbusops.cli import exitcodes
from vmbusops.cli.exitcodes import exit_code_for
from vmbusops.errors import VmbusOpsError
from vmbusops.heap import program_started

#: Every subcommand: its name -> (module, attribute). A command's module is imported only when
#: that command runs (or when --help lists them all), so `vmbusops --version` and a short command
#: do not load the HTTP server stack, trio or psrpcore. Keep it sorted.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("vmbusops.cli.agent_cmds", "agent"),
    "bundle": ("vmbusops.cli.bundle_cmds", "bundle"),
    "copy": ("vmbusops.cli.guest_cmds", "copy_cmd"),
    "cred": ("vmbusops.cli.cred_cmds", "cred"),
    "demo": ("vmbusops.cli.demo", "demo_cmd"),
    "dsc": ("vmbusops.cli.dsc_cmds", "dsc"),
    "exec": ("vmbusops.cli.guest_cmds", "exec_cmd"),
    "fleet": ("vmbusops.cli.fleet_cmds", "fleet"),
    "history": ("vmbusops.cli.jobs_view", "history_cmd"),
    "hosts": ("vmbusops.cli.host_cmds", "hosts_cmd"),
    "jobs": ("vmbusops.cli.engine_cmds", "jobs"),
    "keys": ("vmbusops.cli.bundle_cmds", "keys"),
    "lab": ("vmbusops.cli.lab_cmds", "lab"),
    "logs": ("vmbusops.cli.engine_cmds", "logs_cmd"),
    "prune": ("vmbusops.cli.prune_cmd", "prune_cmd"),
    "receipt": ("vmbusops.cli.receipt_cmds", "receipt"),
    "reference": ("vmbusops.cli.reference_cmd", "reference_cmd"),
    "run": ("vmbusops.cli.engine_cmds", "run_cmd"),
    "schedule": ("vmbusops.cli.agent_cmds", "schedule"),
    "submit": ("vmbusops.cli.remote", "submit_cmd"),
    "trust": ("vmbusops.cli.bundle_cmds", "trust"),
    "vms": ("vmbusops.cli.guest_cmds", "vms_cmd"),
}


class _Group(click.Group):
    """Loads each subcommand from :data:`COMMANDS` when it is asked for, and maps our errors to a
    one-line message and a documented exit code, in one place."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        command = getattr(importlib.import_module(where[0]), where[1])
        assert isinstance(command, click.Command)
        return command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VmbusOpsError as exc:
            click.secho(f"vmbusops: {exc}", err=True, fg="red")
            ctx.exit(exit_code_for(exc))
        except click.UsageError as exc:  # a subcommand's arguments, as click's parser judged them
            _usage_error(exc)


def _usage_error(exc: click.UsageError) -> NoReturn:
    """Click's usage errors in our one-line form (click's own is four lines with a usage
    synopsis): what was wrong, then where the command's help is. Bare ``vmbusops`` (no
    arguments) still shows the help."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        raise exc
    where = exc.ctx.command_path if exc.ctx is not None else "vmbusops"
    click.secho(f"vmbusops: {exc.format_message()}", err=True, fg="red")
    click.echo(f"  hint: see {where} --help", err=True)
    raise click.exceptions.Exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmbusops")
def cli() -> None:
    """Manage Hyper-V tenant VMs over the VMBus: Copy-VMFile and PowerShell Direct, with live records.

    State lives under $VMBUSOPS_HOME. The host defaults to the embedded simulator
    (--host sim); on a Hyper-V host use --host local.
    """


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def _click_saw_a_broken_pipe() -> bool:
    """Click answers a broken pipe it catches itself with exit 1, after wrapping stdout so that
    its last flush is quiet; that wrapper is how to tell it from a guest's failure."""
    return type(sys.stdout).__name__ == "_PacifyFlushWrapper"


def main() -> None:
    program_started()  # the commands that read or serve for long may settle the collector
    try:
        sys.exit(cli.main(prog_name="vmbusops", standalone_mode=True))
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code == 1 and _click_saw_a_broken_pipe():
            sys.exit(exitcodes.READER_GONE)
        if not _only_broken_pipes(exc):
            raise
        # The reader went away (`| head`): say nothing more, and exit as a command killed by
        # SIGPIPE does (128 + 13), not 1, which says a guest failed. Python would complain again
        # while flushing a stdout nobody reads.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(exitcodes.READER_GONE)
