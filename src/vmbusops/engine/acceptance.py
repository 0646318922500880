"""Accepting a bundle so that its acceptance and its job (or schedule) are one fact.

``vmbusops run`` and the agent's API accept a bundle here: :func:`accept` verifies it, extracts
it and *reserves* it in the replay store for this process (:mod:`vmbusops.bundle.replay`); the
caller then creates the job (or registers the schedule) and calls :func:`confirm`, or
:func:`release` when it could not, which gives the bundle back. The replay store is opened with
:func:`bundle_has_fact`, which looks in the journal and the schedule store, so a reservation left
by a killed process counts exactly when its job or schedule was created: every accepted bundle
has a job that is finished, running or resumable (or a schedule), and a bundle whose job never
came to be may be run again.

:func:`recheck` is what resuming a job and each scheduled tick ask before they run anything: the
kept bundle, judged again against today's trust policy (:func:`vmbusops.bundle.verify.reverify`).

All of it blocks (SQLite, file hashing): call it from a worker thread in the agent.
"""

from __future__ import annotations

from pathlib import Path

from vmbusops.bundle.errors import DocumentsError
from vmbusops.bundle.manifest import Manifest
from vmbusops.bundle.paths import accepted_bundles_dir, replay_store_path, trust_policy_path
from vmbusops.bundle.policy import load_trust_policy
from vmbusops.bundle.replay import HasFact, ReplayStore
from vmbusops.bundle.verify import AcceptedBundle, VerifiedBundle, accept_bundle, release_accepted, reverify
from vmbusops.dsc.documents import manifest_documents_problem
from vmbusops.engine.journal import Journal, journal_path
from vmbusops.engine.source import JobSource
from vmbusops.schedule.store import ScheduleStore, schedules_path


def bundle_has_fact(journal: Journal | None) -> HasFact:
    """Whether a job (in ``journal``; None: there is no journal yet) or a schedule (in the agent's
    store) of a bundle id exists."""

    def has_fact(bundle_id: str) -> bool:
        if journal is not None and journal.has_bundle(bundle_id):
            return True
        path = schedules_path()
        if not path.exists():
            return False
        store = ScheduleStore(path)
        try:
            return store.has_bundle(bundle_id)
        finally:
            store.close()

    return has_fact


def open_replay(journal: Journal | None) -> ReplayStore:
    return ReplayStore(replay_store_path(), has_fact=bundle_has_fact(journal))


def reading_replay() -> ReplayStore:
    """The replay store as ``bundle verify`` reads it: nothing written, the journal only read."""
    return open_replay(Journal(readonly=True) if journal_path().exists() else None)


def accept(path: Path, journal: Journal) -> AcceptedBundle:
    """Verify and extract the bundle file, and reserve it for this process (see the module doc).
    A dsc step whose documents cannot be applied (:mod:`vmbusops.dsc.documents`) refuses the
    bundle here, released again: no job is made of it, and it is not used up."""
    policy = load_trust_policy(trust_policy_path())
    with open_replay(journal) as replay:
        bundle = accept_bundle(path, policy=policy, replay=replay, workdir=accepted_bundles_dir())
        wrong = manifest_documents_problem(
            bundle.manifest, lambda p: bundle.local_path(p).read_text(encoding="utf-8-sig")
        )
        if wrong is not None:
            release_accepted(bundle, replay)
            raise DocumentsError(f"step {wrong[0]}: {wrong[1].message}", hint=wrong[1].hint, bundle=path.name)
        return bundle


def confirm(bundle: AcceptedBundle, journal: Journal) -> None:
    """The bundle's job or schedule exists: its acceptance stands."""
    with open_replay(journal) as replay:
        replay.confirm(bundle.manifest.id)


def release(bundle: AcceptedBundle, journal: Journal) -> None:
    """No job or schedule could be made of the bundle: it was never accepted, its files go."""
    with open_replay(journal) as replay:
        release_accepted(bundle, replay)


def recheck_kept(envelope: bytes | None, manifest: Manifest, directory: Path | None) -> VerifiedBundle:
    """A kept bundle against today's trust policy; raises a BundleError if it fails."""
    return reverify(envelope, manifest, policy=load_trust_policy(trust_policy_path()), directory=directory)


def recheck(source: JobSource) -> VerifiedBundle:
    """A job's kept bundle against today's trust policy (``Engine.resume_job``'s ``recheck``)."""
    return recheck_kept(source.envelope, source.manifest, source.directory)


__all__ = [
    "accept", "bundle_has_fact", "confirm", "open_replay", "reading_replay", "recheck", "recheck_kept", "release",
]  # fmt: skip
