"""Engine tests run against the simulator in this process (:mod:`tests.simhost`), on a lab built
per test (:mod:`tests.builders`).

Every VM of these labs shares one password, so one credential reference serves a whole job; it is
generated per test run and never printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.builders import PASSWORD
from tests.simhost import open_sim_host

from vmbusops.bundle.manifest import Manifest
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.engine import Engine, EngineEvent, EngineOptions, JobSource, Journal, open_engine
from vmbusops.guestops.host import HyperVHost
from vmbusops.sim.hyperv import SessionCount


def credential_for(name: str) -> GuestCredential:
    return GuestCredential("Administrator", Secret(PASSWORD), reference=name)


def source(m: Manifest, directory: Path | None = None) -> JobSource:
    return JobSource(manifest=m, directory=directory, source="test")


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    d = tmp_path / "labs"
    d.mkdir()
    return d


class Harness:
    """A host on a lab, a journal, and an engine whose events are collected."""

    def __init__(self, host: HyperVHost, journal: Journal, engine: Engine, events: list[EngineEvent]) -> None:
        self.host = host
        self.journal = journal
        self.engine = engine
        self.events = events


def harness_for(
    lab: Path, journal_file: Path, *, sessions: SessionCount | None = None, **options: Any
) -> AbstractAsyncContextManager[Harness]:
    """``sessions``: where the simulator counts the PowerShell Direct sessions open at once."""

    @asynccontextmanager
    async def cm() -> AsyncIterator[Harness]:
        events: list[EngineEvent] = []
        # Left open after the block, so tests can read what the engine wrote.
        journal = Journal(journal_file)
        async with (
            open_sim_host(lab, sessions=sessions) as host,
            open_engine(
                host,
                journal,
                credential_for=credential_for,
                options=EngineOptions(heartbeat_interval=0.1, lease_poll_interval=0.05, **options),
                on_event=events.append,
            ) as engine,
        ):
            yield Harness(host, journal, engine, events)

    return cm()
