"""Engine tests run against the real simulator process with a lab written per test.

Every VM of these labs shares one password, so one credential reference serves a whole job; it is
generated per test run and never printed.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vmbusops.bundle.manifest import Manifest, manifest_from_dict
from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.engine import Engine, EngineEvent, EngineOptions, JobSource, Journal, open_engine
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.host import HyperVHost

PASSWORD = "Eng!" + secrets.token_hex(8)


@dataclass
class VM:
    name: str
    state: str = "Running"
    latency_ms: float = 0
    guest_services: bool = True
    faults: dict[str, int] = field(default_factory=dict)


def lab_text(vms: Sequence[VM], *, session_open_ms: float = 0, boot_seconds: float = 0.5) -> str:
    lines = [
        "[host]",
        'name = "HV-TEST"',
        f"session_open_ms = {session_open_ms}",
        f"boot_seconds = {boot_seconds}",
        "",
    ]
    for vm in vms:
        lines += [
            "[[vm]]",
            f'name = "{vm.name}"',
            f'state = "{vm.state}"',
            f"guest_services = {'true' if vm.guest_services else 'false'}",
            f'password = "{PASSWORD}"',
            f"latency_ms = {vm.latency_ms}",
        ]
        if vm.faults:
            lines.append("[vm.faults]")
            lines += [f"{k} = {v}" for k, v in vm.faults.items()]
        lines.append("")
    return "\n".join(lines)


def write_lab(directory: Path, vms: Sequence[VM], **host: Any) -> Path:
    path = directory / f"lab-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(lab_text(vms, **host))
    return path


def credential_for(name: str) -> GuestCredential:
    return GuestCredential("Administrator", Secret(PASSWORD), reference=name)


def manifest(
    vms: Sequence[str],
    steps: Sequence[dict[str, Any]],
    *,
    execution: dict[str, Any] | None = None,
    name: str = "test-job",
) -> Manifest:
    """An unsigned manifest for in-process tests (the CLI only ever runs verified bundles)."""
    now = datetime.now(UTC)
    doc: dict[str, Any] = {
        "name": name,
        "version": 1,
        "id": str(uuid.uuid4()),
        "issued": now.isoformat(),
        "expires": (now + timedelta(hours=1)).isoformat(),
        "targets": {"vms": list(vms)},
        "credential": "lab-admin",
        "steps": [dict(s) for s in steps],
        "files": [],
    }
    if execution is not None:
        doc["execution"] = execution
    return manifest_from_dict(doc)


def script(name: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "script", "name": name, "inline": text, **extra}


def source(m: Manifest, directory: Path | None = None) -> JobSource:
    return JobSource(manifest=m, directory=directory, source="test")


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    d = tmp_path / "labs"
    d.mkdir()
    return d


HostFactory = Callable[..., Any]


async def open_lab_host(lab: Path) -> Any:
    return open_host("sim", config=Config(host="sim", lab=str(lab), max_runspaces=256))


class Harness:
    """A host on a lab, a journal, and an engine whose events are collected."""

    def __init__(self, host: HyperVHost, journal: Journal, engine: Engine, events: list[EngineEvent]) -> None:
        self.host = host
        self.journal = journal
        self.engine = engine
        self.events = events


def harness_for(lab: Path, journal_file: Path, **options: Any) -> Any:
    @asynccontextmanager
    async def cm() -> AsyncIterator[Harness]:
        events: list[EngineEvent] = []
        # Left open after the block, so tests can read what the engine wrote.
        journal = Journal(journal_file)
        async with (
            open_host("sim", config=Config(host="sim", lab=str(lab), max_runspaces=256)) as host,
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
