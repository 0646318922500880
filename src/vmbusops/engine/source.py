"""What a job runs, and where it came from: :class:`JobSource`.

A job source is made by one of its named constructors, each of which carries every field: a
bundle accepted just now (``vmbusops run``, the agent's API), a schedule's tick, or a job of the
journal being resumed. In particular the trust scope's permission to enable the Guest Service
Interface travels with the job into the journal and the schedule store, so a resumed or
scheduled DSC job keeps exactly the permissions its bundle was accepted with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vmbusops.bundle.manifest import ExecutionPolicy, Manifest, ScriptStep, manifest_from_dict
from vmbusops.engine.targets import LeftOut, refuse_no_targets, resolve_on_host, resolve_targets, within_scope
from vmbusops.errors import ConfigError

if TYPE_CHECKING:
    from vmbusops.bundle.verify import AcceptedBundle
    from vmbusops.engine.journal import JobView
    from vmbusops.guestops.host import HyperVHost


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
    #: The VM globs of the trust scope that accepted the bundle: the VMs its targets resolve to
    #: are checked against them by name (:func:`.targets.within_scope`); None: not checked (a
    #: resumed job, whose runs exist already, and the engine's own tests).
    scope_vms: tuple[str, ...] | None = None
    #: VMs the targets selected that the signer's scope left out (set by :meth:`resolved_on`).
    left_out: tuple[LeftOut, ...] = ()
    #: No run starts after this (epoch seconds; a schedule tick's cut-off), resumed or not.
    start_by: float | None = None

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
            scope_vms=bundle.scope.vms,
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
            start_by=job.start_by,
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
        scope_vms: tuple[str, ...] | None = None,
        start_by: float | None = None,
    ) -> JobSource:
        """One tick of the schedule named ``schedule``, under ``execution`` (the tick's window
        caps it) and, resumed too, no run started after ``start_by`` (the tick's cut-off); its
        submitter is ``schedule:NAME``."""
        return cls(
            manifest=replace(manifest, execution=execution),
            directory=Path(bundle_dir) if bundle_dir else None,
            source=source,
            enable_guest_services=enable_guest_services,
            envelope=envelope,
            submitter=f"schedule:{schedule}",
            scope_vms=scope_vms,
            start_by=start_by,
        )

    async def resolved_on(self, host: HyperVHost) -> JobSource:
        """This source with its targets resolved on ``host`` (unless the submission resolved them)
        and bounded by the signer's scope: :attr:`targets` the VMs to run on, :attr:`left_out`
        those the scope does not cover. Raises ConfigError or a ScopeError when nothing is left."""
        vms = self.targets if self.targets is not None else await resolve_on_host(self.manifest, host)
        refuse_no_targets(self.manifest, vms)
        kept, left_out = within_scope(vms, self.scope_vms)
        return replace(self, targets=tuple(kept), left_out=(*self.left_out, *left_out))

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


__all__ = ["FLEET_SOURCE_PREFIX", "JobSource", "resolve_targets"]
