"""``config.toml``'s host session cap: read, defaulted, refused with one line when it is not a count."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.clirun import vmbusops

from vmbusops.config import DEFAULT_MAX_SESSIONS, HOST_COMMAND_RUNSPACES, load_config
from vmbusops.errors import ConfigError


def write(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_session_cap_defaults_to_invoke_commands_throttle_limit(vmbusops_home: Path) -> None:
    config = load_config(write(vmbusops_home, "[host]\ndefault = 'sim'\n"))
    assert config.max_sessions == DEFAULT_MAX_SESSIONS == 32
    assert config.pool_runspaces == 64  # max_runspaces' default already leaves room


def test_a_session_cap_above_the_pool_widens_the_pool(vmbusops_home: Path) -> None:
    config = load_config(write(vmbusops_home, "[host]\nmax_sessions = 200\n"))
    assert config.max_sessions == 200
    # Every session needs a runspace, and host commands (Get-VM, Copy-VMFile) one beside them.
    assert config.pool_runspaces == 200 + HOST_COMMAND_RUNSPACES
    wide = load_config(write(vmbusops_home, "[host]\nmax_sessions = 4\nmax_runspaces = 100\n"))
    assert (wide.max_sessions, wide.pool_runspaces) == (4, 100)


@pytest.mark.parametrize("value", ["0", "-3", "1025", "2.5", "'32'", "true", "[32]"])
def test_a_bad_session_cap_is_refused(vmbusops_home: Path, value: str) -> None:
    path = write(vmbusops_home, f"[host]\nmax_sessions = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message == f"{path}: [host] max_sessions must be a whole number from 1 to 1024"


def test_a_bad_session_cap_is_one_line_and_a_usage_error(vmbusops_home: Path) -> None:
    write(vmbusops_home, "[host]\nmax_sessions = 0\n")
    ran = vmbusops("exec", "--vm", "web01", "--", "hostname")
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == [
        f"vmbusops: {vmbusops_home / 'config.toml'}: [host] max_sessions must be a whole number from 1 to 1024"
    ]


def test_the_agent_refuses_a_session_cap_below_one() -> None:
    ran = vmbusops("agent", "--max-sessions", "0")
    assert ran.returncode == 2
    assert "--max-sessions" in ran.stderr and "1<=x<=1024" in ran.stderr
