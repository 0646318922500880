"""The pwsh-lab host under test: its lab file, credentials, and opening it or the simulator on it."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from tests.builders import VM, lab_text

from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.host import HyperVHost
from vmbusops.sim.lab import Lab, load_lab

# boot_seconds is short so a restarted guest comes back within a test; session_open_ms is 0 so
# the time a test takes is PowerShell's own.
LAB_TEXT = lab_text(
    [
        VM("web01", more={
            "computer_name": "WEB01-LAB",
            "files": {"C:\\inetpub\\wwwroot\\index.html": "<html>web01</html>\n"},
        }),
        VM("web02"),
        VM("legacy01", state="Off", guest_services=False),
        VM("app01", guest_services=False),  # last: a test appends [vm.faults] to it
    ],
    name="HV-LAB01",
    boot_seconds=2.0,
    password_seed="pwsh-lab-tests",
)  # fmt: skip


class PwshLab:
    """One lab file, opened as the pwsh-lab host or as the simulator over the same state."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home
        self.lab: Lab = load_lab(path)

    def config(self, kind: str) -> Config:
        return Config(host=kind, lab=str(self.path), max_runspaces=8)

    def open(self, kind: str = "pwsh-lab") -> AbstractAsyncContextManager[HyperVHost]:
        return open_host(kind, config=self.config(kind))

    def credential(self, vm: str = "web01", *, password: str | None = None) -> GuestCredential:
        user, real = self.lab.credential(vm)
        return GuestCredential(user, Secret(real if password is None else password), reference="lab")

    def guest_file(self, vm: str, *parts: str) -> Path:
        return self.home.joinpath("sim", "guests", vm.casefold(), "C", *parts)
