"""A job's source keeps every field through the journal and the schedule store."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.builders import journal_as_left

from vmbusops.bundle.manifest import Manifest, manifest_from_dict
from vmbusops.engine import JobSource, Journal
from vmbusops.owner import current_owner
from vmbusops.schedule.store import ScheduleStore


def dsc_manifest() -> Manifest:
    now = datetime.now(UTC)
    return manifest_from_dict(
        {
            "name": "web-baseline",
            "version": 3,
            "id": str(uuid.uuid4()),
            "issued": now.isoformat(),
            "expires": (now + timedelta(hours=1)).isoformat(),
            "targets": {"vms": ["web01"]},
            "credential": "lab-admin",
            "steps": [{"kind": "script", "name": "hello", "inline": "'hi'"}],
            "files": [],
        }
    )


def journal_job(journal: Journal, manifest: Manifest, *, gsi: bool) -> int:
    job_id, _ = journal.create_job(
        bundle_name=manifest.name,
        bundle_version=manifest.version,
        bundle_id=manifest.id,
        source="api:ops",
        manifest=manifest.to_json().decode(),
        bundle_dir="/srv/bundles/x",
        enable_guest_services=gsi,
        envelope='{"signed": "envelope"}',
        host="HV1",
        vms=["web01"],
        steps=[("hello", "script")],
        owner=current_owner(),
        now=1.0,
    )
    return job_id


def test_a_resumed_job_keeps_the_permission_its_bundle_was_accepted_with(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    manifest = dsc_manifest()
    allowed, plain = journal_job(journal, manifest, gsi=True), journal_job(journal, manifest, gsi=False)
    source = JobSource.from_journal(journal.job(allowed))
    assert source.enable_guest_services is True
    assert (source.manifest, source.directory, source.source) == (manifest, Path("/srv/bundles/x"), "api:ops")
    assert JobSource.from_journal(journal.job(plain)).enable_guest_services is False
    assert source.envelope == b'{"signed": "envelope"}'  # kept, so resuming can verify it again


def test_a_journal_from_before_the_permission_column_opens_and_defaults_it_off(tmp_path: Path) -> None:
    path = journal_as_left(tmp_path / "old.sqlite", "ALTER TABLE jobs DROP COLUMN enable_guest_services")
    journal = Journal(path)
    job_id = journal_job(journal, dsc_manifest(), gsi=True)
    assert journal.job(job_id).enable_guest_services is True


def test_a_scheduled_tick_keeps_the_permission_and_takes_the_window_s_execution(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path / "schedules.sqlite")
    manifest = dsc_manifest()
    store.register(
        manifest, bundle_dir="/b", source="api:ops", now=datetime.now(UTC), enable_guest_services=True, envelope=b"{}"
    )
    entry = store.get(manifest.name)
    capped = replace(manifest.execution, delivery_timeout_seconds=5.0)
    source = JobSource.from_schedule(
        entry.manifest,
        bundle_dir=entry.bundle_dir,
        source=entry.source,
        enable_guest_services=entry.enable_guest_services,
        execution=capped,
        envelope=entry.envelope,
        schedule=entry.name,
    )
    assert source.submitter == f"schedule:{entry.name}"
    assert source.enable_guest_services is True
    assert source.envelope == b"{}"
    assert source.manifest.execution.delivery_timeout_seconds == 5.0
    assert source.directory == Path("/b")
