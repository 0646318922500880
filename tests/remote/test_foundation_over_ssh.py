"""The foundation's client and host-operation tests, unchanged, over SSH to a real sshd.

The test functions are the very ones in tests/psrp/test_client.py and
tests/guestops/test_host_ops.py, loaded as separate module copies whose ``open_host`` opens the
host through OpenSSH's ``powershell`` subsystem (the simulator behind sshd) instead of a child
process. Files given to ``copy_to_guest`` are staged onto the "host" over SFTP first, as for
any remote host. Tests that drive a child process directly (ProcessTransport) are about that transport
and stay where they are; every test that opens a host runs here again.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sshd import Sshd

from vmbusops.config import Config
from vmbusops.guestops.remote import RemoteHyperVHost, open_ssh_host

TESTS = Path(__file__).resolve().parent.parent
_current: list[Sshd] = []


@asynccontextmanager
async def open_host_over_ssh(
    kind: str | None = None, *, config: Config | None = None, max_runspaces: int | None = None
) -> AsyncIterator[RemoteHyperVHost]:
    assert kind == "sim" and config is not None and config.lab is not None
    server = _current[-1]
    server.use_lab(Path(config.lab))
    async with open_ssh_host(
        server.target(), max_runspaces=max_runspaces or config.max_runspaces, staging_root=str(server.staging_root)
    ) as host:
        yield host


def _load(relative: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TESTS / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.open_host = open_host_over_ssh  # type: ignore[attr-defined]
    return module


@pytest.fixture(autouse=True)
def _through_sshd(sshd: Sshd) -> Iterator[None]:
    _current.append(sshd)
    yield
    _current.pop()


def _export(module: ModuleType, prefix: str) -> list[str]:
    names = []
    for name, fn in vars(module).items():
        if name.startswith("test_") and callable(fn) and "open_host(" in inspect.getsource(fn):
            exported = f"test_{prefix}_{name[5:]}"
            globals()[exported] = fn
            names.append(exported)
    return names


EXPORTED: list[Any] = _export(_load("psrp/test_client.py", "ssh_copy_of_test_client"), "client") + _export(
    _load("guestops/test_host_ops.py", "ssh_copy_of_test_host_ops"), "host_ops"
)


def test_the_foundation_tests_really_run_here() -> None:
    assert len(EXPORTED) >= 12, EXPORTED
