"""The command line starts fast: a command's module is imported only when that command runs."""

from __future__ import annotations

import subprocess
import sys

import click

from vmbusops.cli.main import COMMANDS, cli

HEAVY = ("trio", "psrpcore", "hypercorn", "starlette", "httpx", "cryptography", "rich", "asyncssh", "pypsrp")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {line.split(".")[0] for line in out.splitlines()}


def test_version_loads_none_of_the_heavy_stacks() -> None:
    loaded = _modules_after(
        "from vmbusops.cli.main import cli\n"
        "try:\n    cli.main(['--version'], prog_name='vmbusops', standalone_mode=False)\n"
        "except SystemExit:\n    pass"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # The check can fail: running a command does load its stack.
    assert "trio" in _modules_after("import vmbusops.cli.guest_cmds")


def test_every_registered_command_resolves_to_its_click_command() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name, (name, command.name)
    assert cli.get_command(ctx, "nosuch") is None
