"""Fixtures for remote hosts: a real OpenSSH server on loopback (see sshd.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sshd import Sshd, find_sshd, start_sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    binary = find_sshd()
    if binary is None:
        pytest.fail("OpenSSH's sshd is not installed; ./scripts/test installs it (apt-get install openssh-server)")
    server = start_sshd(tmp_path_factory.mktemp("sshd"), binary)
    try:
        yield server
    finally:
        server.stop()
