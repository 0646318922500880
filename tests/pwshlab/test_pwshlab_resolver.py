"""Which PowerShell the agent starts, and with what: no PowerShell needed to check these."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.builders import VM, write_lab

from vmbusops.config import Config
from vmbusops.errors import ConfigError
from vmbusops.guestops.connect import host_argv, host_environment
from vmbusops.psrp.transport import POWERSHELL_ARGV, find_pwsh, require_pwsh


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_vmbusops_pwsh_wins_and_a_bad_one_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = _executable(tmp_path / "pwsh")
    monkeypatch.setenv("VMBUSOPS_PWSH", str(mine))
    assert find_pwsh() == str(mine)
    assert host_argv("pwsh", Config())[0] == str(mine)
    monkeypatch.setenv("VMBUSOPS_PWSH", str(tmp_path / "missing"))
    assert find_pwsh() is None
    with pytest.raises(ConfigError) as info:
        host_argv("pwsh-lab", Config())
    assert "\n" not in info.value.message and "VMBUSOPS_PWSH" in info.value.message


def test_pwsh_on_path_comes_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMBUSOPS_PWSH", raising=False)
    on_path = _executable(tmp_path / "pwsh")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert require_pwsh() == str(on_path)


def test_pwsh_lab_starts_server_mode_with_the_lab_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBUSOPS_PWSH", str(_executable(tmp_path / "pwsh")))
    lab = write_lab(tmp_path, [VM("web01")])  # read once here: a bad lab is a usage error before pwsh starts
    argv = host_argv("pwsh-lab", Config(host="pwsh-lab", lab=str(lab)))
    assert argv[1:5] == ("-NoLogo", "-NoProfile", "-s", "-ConfigurationFile")
    assert Path(argv[5]).is_file() and argv[5].endswith("VmbusOpsLab.pssc")
    env = host_environment("pwsh-lab", Config(host="pwsh-lab", lab=str(lab)))
    assert env is not None
    assert env["VMBUSOPS_PWSHLAB_LAB"] == str(lab.resolve())
    assert Path(env["PSModulePath"].split(os.pathsep)[0], "VmbusOpsLab", "VmbusOpsLab.psm1").is_file()
    assert Path(env["VMBUSOPS_PWSHLAB_PYTHON"]).name.startswith("python")
    # Passwords never travel in the environment or on a command line.
    assert not any("password" in key.lower() for key in env)
    assert host_environment("sim", Config()) is None


def test_windows_powershell_is_started_without_a_version_switch() -> None:
    # powershell.exe -Version selects an older engine (2.0); a 5.1 host is started as is.
    assert "-Version" not in POWERSHELL_ARGV
    assert POWERSHELL_ARGV == ("powershell.exe", "-NoLogo", "-NoProfile", "-ServerMode")
