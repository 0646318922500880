"""Running ``vmbusops`` in the test's own process: the command line as an operator types it, without
an interpreter start-up per command.

:func:`vmbusops` calls the same click group ``python -m vmbusops`` runs (``vmbusops.cli.main.cli``,
standalone, so usage errors and our errors become exit codes exactly as in the process) with its
stdout and stderr captured apart. Tests of what only a process has (a signal, a reader that goes
away, start-up imports, an agent serving HTTP) start a real one instead.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner


@dataclass(frozen=True)
class Ran:
    """What a finished command left: its exit code and what it wrote, as subprocess.run reports them."""

    returncode: int
    stdout: str
    stderr: str


def vmbusops(
    *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Ran:
    from vmbusops.cli.main import cli

    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(
            cli, list(args), input=stdin, env=dict(env) if env else None, prog_name="vmbusops",
            catch_exceptions=False,
        )  # fmt: skip
    return Ran(result.exit_code, result.stdout, result.stderr)


__all__ = ["Ran", "vmbusops"]


#: Run by :func:`hangup_delivered` before the command: SIGHUP back to its default, then exec.
_HANGUP_DEFAULT = "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def hangup_delivered(argv: list[str]) -> list[str]:
    """``argv`` (its first item an absolute path) started with SIGHUP at its default disposition.
    A test runner started under ``nohup`` passes SIGHUP on ignored to its children, and vmbusops
    keeps a hangup that its parent ignored ignored; a test of what a hangup does needs it sent."""
    return [sys.executable, "-c", _HANGUP_DEFAULT, *argv]
