"""Every test runs against its own VMBUSOPS_HOME, so state never leaks between tests or users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.builders import VM, write_lab

if TYPE_CHECKING:
    from vmbusops.credentials import GuestCredential


def pytest_configure(config: pytest.Config) -> None:
    """Child processes (``python -m vmbusops``, the simulator, an agent) import the same vmbusops as
    the tests do: this checkout's src/, not whatever the environment has installed."""
    import os

    import vmbusops

    src = str(Path(vmbusops.__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *paths])
    # pytest-xdist's --dist loadfile hands files out most-tests-first by default, which sends the
    # long single-test files (a README flow, the soak) out last, where one worker runs them alone
    # while the other waits. The order of :func:`pytest_collection_modifyitems` is kept instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.fixture(autouse=True)
def vmbusops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "vmbusops-home"
    home.mkdir()
    monkeypatch.setenv("VMBUSOPS_HOME", str(home))
    for var in ("VMBUSOPS_HOST", "VMBUSOPS_LAB", "VMBUSOPS_CREDENTIAL_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    yield home


#: The lab most client, CLI and remote tests run on (passwords derived from its seed).
CLIENT_VMS = (
    VM("web01", more={"services": [
        {"name": "W3SVC", "display_name": "World Wide Web Publishing Service", "status": "Running"},
    ]}),
    VM("web02"),
    VM("legacy01", state="Off", guest_services=False),
    VM("app01", guest_services=False),
    VM("flaky01", faults={"session_drop_after_records": 3}),
)  # fmt: skip
CLIENT_HOST = {"name": "HV-CLIENT", "boot_seconds": 0.5, "password_seed": "client-tests"}


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
def make_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., SimLab]:
    """Write the client lab (any ``host`` keyword adds or replaces a [host] key, e.g. crash_on) and
    point VMBUSOPS_LAB at it."""

    def make(**host: Any) -> SimLab:
        path = write_lab(tmp_path, CLIENT_VMS, **{**CLIENT_HOST, **host})
        monkeypatch.setenv("VMBUSOPS_LAB", str(path))
        return SimLab(path)

    return make


# ---------------------------------------------------------------------------- real PowerShell
# Tests marked `pwsh` run against a real PowerShell 7: $VMBUSOPS_PWSH, `pwsh` on PATH, or the copy
# staged beside the checkout (../shared/pwsh/pwsh). Where none is found they are counted as not
# run and the summary says so in one line; on CI (CI=true) a missing PowerShell fails the run.

_PWSH_TESTS: dict[str, int] = {"ran": 0, "not_run": 0}
_NO_PWSH = "no PowerShell 7 found (set VMBUSOPS_PWSH)"


def find_pwsh() -> str | None:
    """The PowerShell 7 the real-PowerShell lane uses, or None (the product's own resolver)."""
    from vmbusops.psrp.transport import find_pwsh as resolve

    return resolve()


def _long_files_first(items: list[pytest.Item]) -> None:
    """Files with a test marked ``slow`` or ``pwsh`` (a real PowerShell per test) first, each file's
    tests kept together and in order: the workers start on the long files and end together on the
    short ones."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    long = {f for f, its in files.items() if any(i.get_closest_marker(m) for i in its for m in ("slow", "pwsh"))}
    items[:] = [i for f in sorted(files, key=lambda f: f not in long) for i in files[f]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _long_files_first(items)
    if find_pwsh() is not None:
        return
    for item in items:
        if item.get_closest_marker("pwsh") is not None:
            item.add_marker(pytest.mark.skip(reason=_NO_PWSH))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Counted from the reports, not at collection: under pytest-xdist the workers collect, and
    # the controller, which prints the summary and sets the exit status, only sees reports.
    if report.when != "setup" or "pwsh" not in report.keywords:
        return
    lacking = report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(_NO_PWSH)
    _PWSH_TESTS["not_run" if lacking else "ran"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _PWSH_TESTS["not_run"]:
        terminalreporter.write_line(
            f"real-PowerShell lane: {_PWSH_TESTS['not_run']} tests NOT RUN: no PowerShell 7 found "
            "(set VMBUSOPS_PWSH to a pwsh 7, or stage ../shared/pwsh)",
            red=True,
        )
    elif _PWSH_TESTS["ran"]:
        terminalreporter.write_line(f"real-PowerShell lane: {_PWSH_TESTS['ran']} tests run, on {find_pwsh()}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os

    if _PWSH_TESTS["not_run"] and os.environ.get("CI") == "true" and exitstatus == 0:
        # CI always has the staged PowerShell: a lane that could not run is a failure, not a pass.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def pwsh_path() -> str:
    """The real PowerShell 7 for tests marked ``pwsh`` (they are skipped where there is none)."""
    pwsh = find_pwsh()
    assert pwsh is not None
    return pwsh
