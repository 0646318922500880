"""Options and plumbing the commands share: the host, loading the configuration, running trio with Ctrl-C."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import trio

from vmbusops.cli import exitcodes
from vmbusops.config import Config, load_config
from vmbusops.errors import ConfigError, VmbusOpsError
from vmbusops.stop_signals import stop_signals

F = TypeVar("F", bound=Callable[..., Any])

def host_option(fn: F) -> F:
    return click.option(
        "--host",
        "host",
        metavar="HOST",
        default=None,
        help="sim (the embedded simulated host, default), sim:HOST (one host of a lab with [[hosts]]), local (powershell.exe on this Hyper-V host), "
        "pwsh, pwsh-lab (the lab on real PowerShell 7), ssh://[user@]host[:port] or winrm://host (a remote "
        "Hyper-V host), or the NAME of a [hosts.NAME] entry of config.toml; default from $VMBUSOPS_HOST "
        "or config.toml.",
    )(fn)


#: What an interrupted command says by default: it ran guest pipelines, and stops them.
STOPPING_PIPELINES = "interrupted, stopping guest pipelines..."


def run_trio(fn: Callable[[], Awaitable[int]], *, saying: str = STOPPING_PIPELINES) -> int:
    """Run ``fn`` under trio; the first Ctrl-C (or SIGTERM, or a hangup not ignored:
    :mod:`vmbusops.stop_signals`) cancels it cleanly, says ``saying`` on stderr, and gives
    exit 130.

    Cancelling lets every open pipeline send its PSRP stop signal and wait for the guest command
    to end before the process exits; a second Ctrl-C interrupts at once. A command that runs no
    pipeline (one that follows a job another process runs) says what stops and what goes on.
    """

    async def main() -> int:
        interrupted = False
        result = exitcodes.OK
        async with trio.open_nursery() as nursery:

            async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                nonlocal interrupted
                with trio.open_signal_receiver(*stop_signals()) as signals:
                    task_status.started()  # fn starts once a signal can no longer slip past
                    async for _ in signals:
                        interrupted = True
                        try:
                            click.echo(f"vmbusops: {saying}", err=True)
                        except OSError:
                            pass  # a hangup: the terminal is gone, and the stop goes on without it
                        nursery.cancel_scope.cancel()
                        return

            await nursery.start(watch)
            result = await fn()
            nursery.cancel_scope.cancel()
        return exitcodes.INTERRUPTED if interrupted else result

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        # The signal watcher's nursery (and the host connection's, around the engine) wraps the
        # command's own error; the CLI maps ours to an exit code and a one-line message
        # (cli.main), so hand it the error itself.
        sole: BaseException = group
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if isinstance(sole, VmbusOpsError):
            raise sole from None
        raise


def load(config_path: str | None = None) -> Config:
    from pathlib import Path

    return load_config(Path(config_path) if config_path else None)


def require_run(vm: str | None, names: list[str], job_id: int) -> None:
    """``vmbusops logs --vm``: a VM the job does not target is a usage error, whichever way the
    records are read (the journal or an agent)."""
    if vm is not None and vm.casefold() not in {n.casefold() for n in names}:
        raise ConfigError(f"no run on {vm} in job {job_id}", hint=f"its VMs: {', '.join(names) or 'none'}")
