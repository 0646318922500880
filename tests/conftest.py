"""Every test runs against its own VMBUSOPS_HOME, so state never leaks between tests or users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vmbusops.credentials import GuestCredential


@pytest.fixture(autouse=True)
def vmbusops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "vmbusops-home"
    home.mkdir()
    monkeypatch.setenv("VMBUSOPS_HOME", str(home))
    for var in ("VMBUSOPS_HOST", "VMBUSOPS_LAB", "VMBUSOPS_CREDENTIAL_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    yield home


CLIENT_LAB = r"""
[host]
name = "HV-CLIENT"
session_open_ms = 0
boot_seconds = 0.5
password_seed = "client-tests"

[[vm]]
name = "web01"
state = "Running"
guest_services = true
services = [{ name = "W3SVC", display_name = "World Wide Web Publishing Service", status = "Running" }]

[[vm]]
name = "web02"
state = "Running"
guest_services = true

[[vm]]
name = "legacy01"
state = "Off"

[[vm]]
name = "app01"
state = "Running"
guest_services = false

[[vm]]
name = "flaky01"
state = "Running"
guest_services = true
[vm.faults]
session_drop_after_records = 3
"""


class SimLab:
    """A lab file on disk and what a test needs to drive it."""

    def __init__(self, path: Path) -> None:
        from vmbusops.config import Config
        from vmbusops.sim.lab import load_lab

        self.path = path
        self.lab = load_lab(path)
        self.config = Config(host="sim", lab=str(path))

    def credential(self, vm: str = "web01") -> GuestCredential:
        from vmbusops.credentials import GuestCredential, Secret

        user, password = self.lab.credential(vm)
        return GuestCredential(user, Secret(password), reference="lab")


@pytest.fixture
def make_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], SimLab]:
    """Write a lab (default: CLIENT_LAB, plus any extra [host] lines) and point VMBUSOPS_LAB at it."""

    def make(extra_host: str = "", text: str | None = None) -> SimLab:
        body = text if text is not None else CLIENT_LAB.replace('password_seed = "client-tests"',
                                                               'password_seed = "client-tests"\n' + extra_host)
        path = tmp_path / f"lab-{abs(hash(body))}.toml"
        path.write_text(body, encoding="utf-8")
        monkeypatch.setenv("VMBUSOPS_LAB", str(path))
        return SimLab(path)

    return make
