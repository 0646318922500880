"""The host inventory from the command line: vmbusops hosts / vms / exec / copy --host NAME."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sshd import Sshd
from tests.clirun import vmbusops

from vmbusops.config import load_config
from vmbusops.credentials import CredentialStore, Secret
from vmbusops.errors import ConfigError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inventory(sshd: Sshd, vmbusops_home: Path, make_lab: Callable[..., Any]) -> Any:
    lab = make_lab()
    sshd.use_lab(lab.path)
    (vmbusops_home / "config.toml").write_text(
        f"""
[hosts.hv-ssh]
transport = "ssh"
address = "{sshd.username}@127.0.0.1:{sshd.port}"
known_hosts = "{sshd.known_hosts}"
identity_file = "{sshd.client_key}"
use_agent = false
staging_dir = "{sshd.staging_root}"

[hosts.hv-down]
transport = "ssh"
address = "{sshd.username}@127.0.0.1:{_closed_port()}"
known_hosts = "{sshd.known_hosts}"
identity_file = "{sshd.client_key}"
use_agent = false

[hosts.hv-sim]
transport = "sim"
""",
        encoding="utf-8",
    )
    user, password = lab.lab.credential("web01")
    CredentialStore().set("web-admin", user, Secret(password))
    return lab


def test_hosts_reports_reachability_and_allowed_cmdlets(inventory: Any) -> None:
    proc = vmbusops("hosts", "--json", "--timeout", "20")
    assert proc.returncode == 3, proc.stderr  # one host is down
    rows = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert list(rows) == ["hv-ssh", "hv-down", "hv-sim"]
    ssh = rows["hv-ssh"]
    assert ssh["reachable"] and ssh["transport"] == "ssh" and ssh["missing"] == []
    assert {"Get-VM", "Copy-VMFile", "Invoke-Command", "Get-FileHash"} <= set(ssh["allowed"])
    # Hyper-V's own spelling; its aliases (Get-VMCheckpoint...) name no command of their own.
    assert {"Checkpoint-VM", "Get-VMSnapshot", "Restore-VMSnapshot"} <= set(ssh["allowed"])
    assert not any("checkpoint" in a.casefold() and a != "Checkpoint-VM" for a in ssh["allowed"])
    assert ssh["extra"] == ["Disable-VMIntegrationService"], "the simulator offers one cmdlet the agent never sends"
    assert rows["hv-sim"]["reachable"]
    assert not rows["hv-down"]["reachable"] and "cannot reach" in rows["hv-down"]["error"]
    only = vmbusops("hosts", "--host", "hv-ssh")
    assert only.returncode == 0, only.stderr
    assert "hv-ssh" in only.stdout and "hv-down" not in only.stdout


def test_vms_exec_and_copy_by_host_name(inventory: Any, tmp_path: Path) -> None:
    proc = vmbusops("vms", "--host", "hv-ssh", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "web01" in {json.loads(line)["vm"] for line in proc.stdout.splitlines()}
    src = tmp_path / "motd.txt"
    src.write_text("maintenance tonight\n", encoding="utf-8")
    copied = vmbusops("copy", "--host", "hv-ssh", "--vm", "web01", str(src), "C:\\Temp\\motd.txt")
    assert copied.returncode == 0, copied.stderr
    ran = vmbusops("exec", "--host", "hv-ssh", "--credential", "web-admin", "--vm", "web01", "--json", "--",
                   "Get-Content -Path 'C:\\Temp\\motd.txt'")
    assert ran.returncode == 0, ran.stderr
    assert "maintenance tonight" in ran.stdout
    down = vmbusops("vms", "--host", "hv-down")
    assert down.returncode == 3 and "cannot reach" in down.stderr


def test_the_inventory_is_strict(vmbusops_home: Path) -> None:
    config = vmbusops_home / "config.toml"
    for body, message in (
        ('[hosts.a]\ntransport = "ssh"\n', "needs an address"),
        ('[hosts.a]\ntransport = "telnet"\naddress = "x"\n', "transport must be one of"),
        ('[hosts.a]\ntransport = "ssh"\naddress = "x"\npassword = "hunter2"\n', "unknown key"),
        ('[hosts.sim]\ntransport = "sim"\n', "cannot be a transport"),
        ('[hosts.a]\ntransport = "winrm"\naddress = "x"\nauth = "basic"\n', "auth must be one of"),
    ):
        config.write_text(body, encoding="utf-8")
        with pytest.raises(ConfigError, match=message) as info:
            load_config(config)
        assert "hunter2" not in str(info.value)
    config.write_text('[hosts.a]\ntransport = "ssh"\naddress = "svc@hv01:2222"\nsubsystem = "vmbusops"\n')
    [entry] = load_config(config).hosts
    assert (entry.name, entry.address, entry.subsystem, entry.use_agent) == ("a", "svc@hv01:2222", "vmbusops", True)
