"""Acceptance is a reservation until the bundle's job exists, and a kept bundle can be judged again."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from bundlecraft import make_bundle, trusting

from vmbusops.bundle import errors as E
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.policy import TrustPolicy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import AcceptedBundle, accept_bundle, release_accepted, reverify
from vmbusops.owner import Owner, current_owner

#: This process's pid with another start time: the kernel says that process is gone.
DEAD = Owner(pid=current_owner().pid, started="gone")


def accept(path: Path, replay: ReplayStore, workdir: Path, policy: TrustPolicy, **kw: object) -> AcceptedBundle:
    return accept_bundle(path, policy=policy, replay=replay, workdir=workdir, **kw)  # type: ignore[arg-type]


def test_a_released_bundle_can_be_accepted_again_and_sets_no_floor(
    tmp_path: Path, alice: PrivateKey, now: datetime
) -> None:
    v2, _ = make_bundle(tmp_path, "v2", [alice], now=now, version=2)
    v1, _ = make_bundle(tmp_path, "v1", [alice], now=now, version=1)
    with ReplayStore.in_memory() as replay:
        first = accept(v2, replay, tmp_path / "w", trusting(alice), now=now)
        release_accepted(first, replay)
        assert not first.directory.exists()
        assert not replay.was_accepted(first.manifest.id)
        accept(v1, replay, tmp_path / "w", trusting(alice), now=now)  # v2 is no floor
        again = accept(v2, replay, tmp_path / "w", trusting(alice), now=now)
        assert again.manifest.id == first.manifest.id


@pytest.mark.parametrize("job_made", [False, True])
def test_a_dead_holders_reservation_counts_only_if_its_job_exists(
    tmp_path: Path, alice: PrivateKey, now: datetime, job_made: bool
) -> None:
    path, m = make_bundle(tmp_path, "b", [alice], now=now, version=3)
    older, _ = make_bundle(tmp_path, "old", [alice], now=now, version=2)
    asked: list[str] = []

    def has_fact(bundle_id: str) -> bool:
        asked.append(bundle_id)
        return job_made

    with ReplayStore.in_memory(has_fact=has_fact) as replay:
        # a process reserved the bundle, then was killed before (or after) it made the job
        accept(path, replay, tmp_path / "w", trusting(alice), now=now, holder=DEAD)
        assert replay.was_accepted(m.id) is job_made
        assert m.id in asked
        if job_made:
            with pytest.raises(E.ReplayedBundleError, match="was already accepted"):
                accept(path, replay, tmp_path / "w", trusting(alice), now=now)
            with pytest.raises(E.VersionRollbackError):
                accept(older, replay, tmp_path / "w", trusting(alice), now=now)
            assert replay.count() == 1
        else:
            accept(older, replay, tmp_path / "w", trusting(alice), now=now)
            accept(path, replay, tmp_path / "w", trusting(alice), now=now)
            assert replay.count() == 2  # the dead reservation was dropped, not kept beside


def test_without_a_way_to_ask_a_dead_reservation_still_counts(
    tmp_path: Path, alice: PrivateKey, now: datetime
) -> None:
    path, m = make_bundle(tmp_path, "b", [alice], now=now)
    with ReplayStore.in_memory() as replay:
        accept(path, replay, tmp_path / "w", trusting(alice), now=now, holder=DEAD)
        assert replay.was_accepted(m.id)


def test_an_old_store_gains_the_holder_columns_and_keeps_its_history(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "accepted.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accepted (id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,"
               " accepted_at TEXT NOT NULL)")  # fmt: skip
    db.execute("INSERT INTO accepted VALUES ('id-1', 'web', 4, '2024-01-01T00:00:00+00:00')")
    db.commit()
    db.close()
    with ReplayStore(path) as replay:
        assert replay.was_accepted("id-1")
        assert replay.last_version("web") == 4


# --- judging a kept bundle again -------------------------------------------------------------------


def kept(tmp_path: Path, alice: PrivateKey, now: datetime, **overrides: object) -> AcceptedBundle:
    path, _ = make_bundle(tmp_path, "kept", [alice], now=now, **overrides)
    with ReplayStore.in_memory() as replay:
        return accept(path, replay, tmp_path / "w", trusting(alice), now=now)


def test_a_kept_bundle_passes_again_under_the_same_trust(tmp_path: Path, alice: PrivateKey, now: datetime) -> None:
    bundle = kept(tmp_path, alice, now)
    again = reverify(
        bundle.envelope.to_json(), bundle.manifest, policy=trusting(alice), directory=bundle.directory, now=now
    )
    assert again.manifest == bundle.manifest


def test_a_kept_bundle_fails_once_its_signer_is_no_longer_trusted(
    tmp_path: Path, alice: PrivateKey, bob: PrivateKey, now: datetime
) -> None:
    bundle = kept(tmp_path, alice, now)
    with pytest.raises(E.UntrustedSignerError, match="no signature from a trusted key"):
        reverify(bundle.envelope.to_json(), bundle.manifest, policy=trusting(bob), directory=bundle.directory, now=now)


def test_a_kept_bundle_fails_once_expired(tmp_path: Path, alice: PrivateKey, now: datetime) -> None:
    bundle = kept(tmp_path, alice, now)
    later = bundle.manifest.expires + timedelta(hours=1)
    with pytest.raises(E.ExpiredBundleError, match="expired at"):
        reverify(bundle.envelope.to_json(), bundle.manifest, policy=trusting(alice), directory=bundle.directory, now=later)


def test_a_kept_file_changed_after_acceptance_fails(tmp_path: Path, alice: PrivateKey, now: datetime) -> None:
    bundle = kept(tmp_path, alice, now)
    victim = bundle.local_path(bundle.manifest.files[0].path)
    victim.chmod(0o600)
    victim.write_bytes(victim.read_bytes() + b"\n# added later")
    with pytest.raises(E.DigestMismatchError, match="no longer matches"):
        reverify(bundle.envelope.to_json(), bundle.manifest, policy=trusting(alice), directory=bundle.directory, now=now)


def test_a_kept_manifest_that_is_not_the_signed_one_fails(tmp_path: Path, alice: PrivateKey, now: datetime) -> None:
    from dataclasses import replace

    bundle = kept(tmp_path, alice, now)
    other = replace(bundle.manifest, credential="someone-else")
    with pytest.raises(E.EnvelopeError, match="not the one its envelope signs"):
        reverify(bundle.envelope.to_json(), other, policy=trusting(alice), directory=bundle.directory, now=now)


def test_without_its_envelope_a_job_cannot_be_judged_again(tmp_path: Path, alice: PrivateKey, now: datetime) -> None:
    bundle = kept(tmp_path, alice, now)
    with pytest.raises(E.EnvelopeMissingError, match="was not kept"):
        reverify(None, bundle.manifest, policy=trusting(alice), directory=bundle.directory, now=now)
