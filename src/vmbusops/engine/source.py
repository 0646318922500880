"""What a job runs, and where it came from: :class:`JobSource`.

A job source is made by one of its named constructors, each of which carries every field: a
bundle accepted just now (``vmbusops run``, the agent's API), a schedule's tick, or a job of the
journal being resumed. In particular the trust scope's permission to enable the Guest Service
Interface travels with the job into the journal and the schedule store, so a resumed or
scheduled DSC job keeps exactly the permissions its bundle was accepted with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vmbusops.bundle.manifest import ExecutionPolicy, Manifest, ScriptStep, manifest_from_dict
from vmbusops.errors import ConfigError
from vmbusops.vm_names import is_glob, vms_matching

if TYPE_CHECKING:
    from vmbusops.bundle.verify import AcceptedBundle
    from vmbusops.engine.journal import JobView


#: How the source of a local job that runs a fleet run begins: such a job is the fleet's to
#: dispatch again, never resumed here (``vmbusops jobs resume`` refuses it).
FLEET_SOURCE_PREFIX = "fleet:"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSource:
    """A manifest, the directory its files were extracted to (if any), and its permissions."""

    manifest: Manifest
    directory: Path | None
    #: Where the bundle came from (a path, ``api:<who>``, ...), as the journal shows it.
    source: str
    #: The trust scope that accepted the bundle lets steps enable the Guest Service Interface.
    enable_guest_services: bool = False
    #: The VMs, when they were resolved already at submission (the API checks them against the
    #: caller's scope); None: the engine resolves the manifest's targets when the job starts.
    targets: tuple[str, ...] | None = None
    #: The signed envelope (JSON) the bundle was accepted with, kept to verify it again on resume
    #: and on each scheduled tick; None for a job made without one (it cannot be resumed).
    envelope: bytes | None = None
    #: Who submitted the job (see :attr:`.journal_rows.JobView.submitter`).
    submitter: str | None = None

    @classmethod
    def from_accepted(
        cls, bundle: AcceptedBundle, *, targets: tuple[str, ...] | None = None, submitter: str | None = None
    ) -> JobSource:
        return cls(
            manifest=bundle.manifest,
            directory=bundle.directory,
            source=bundle.source,
            enable_guest_services=bundle.scope.enable_guest_services,
            targets=targets,
            envelope=bundle.envelope.to_json(),
            submitter=submitter,
        )

    @classmethod
    def from_journal(cls, job: JobView) -> JobSource:
        """The source of a journaled job, to resume it."""
        return cls(
            manifest=manifest_from_dict(json.loads(job.manifest)),
            directory=Path(job.bundle_dir) if job.bundle_dir else None,
            source=job.source,
            enable_guest_services=job.enable_guest_services,
            envelope=job.envelope.encode("utf-8") if job.envelope is not None else None,
            submitter=job.submitter,
        )

    @classmethod
    def from_schedule(
        cls,
        manifest: Manifest,
        *,
        bundle_dir: str | None,
        source: str,
        enable_guest_services: bool,
        execution: ExecutionPolicy,
        envelope: bytes | None,
        schedule: str,
    ) -> JobSource:
        """One tick of the schedule named ``schedule``, under ``execution`` (the tick's window
        caps it); its submitter is ``schedule:NAME``."""
        return cls(
            manifest=replace(manifest, execution=execution),
            directory=Path(bundle_dir) if bundle_dir else None,
            source=source,
            enable_guest_services=enable_guest_services,
            envelope=envelope,
            submitter=f"schedule:{schedule}",
        )

    def local_path(self, bundle_path: str) -> Path:
        if self.directory is None:
            raise ConfigError(f"the job has no bundle files, but a step needs {bundle_path!r}")
        return self.directory.joinpath(*bundle_path.split("/"))

    def script_of(self, step: ScriptStep) -> str:
        if step.inline is not None:
            return step.inline
        assert step.file is not None
        try:
            return self.local_path(step.file).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the script {step.file!r} of step {step.name}: {exc.strerror}"
            ) from exc


def resolve_targets(manifest: Manifest, host_vms: Sequence[str]) -> list[str]:
    """The VMs a bundle targets on this host, in the manifest's order, each once.

    A name or glob matches VM names case-insensitively (:mod:`vmbusops.vm_names`, as ``exec --vm``
    does); a plain name is kept even if the host has no such VM, so that its run fails with
    Hyper-V's own message in the journal rather than vanishing.
    """
    if manifest.targets.groups or manifest.targets.tags:
        raise ConfigError(
            f"{manifest.name}: target groups and tags are not supported on this host",
            hint="name the VMs (globs allowed) in targets.vms",
        )
    chosen: list[str] = []
    seen: set[str] = set()
    for pattern in manifest.targets.vms:
        names = vms_matching(pattern, host_vms) or ([] if is_glob(pattern) else [pattern])
        for name in names:
            if name.casefold() not in seen:
                seen.add(name.casefold())
                chosen.append(name)
    return chosen


__all__ = ["FLEET_SOURCE_PREFIX", "JobSource", "resolve_targets"]
