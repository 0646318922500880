"""The signed manifest: what a bundle will do, where, with which credential, and with which files.

The manifest is JSON (the DSSE payload). :func:`parse_manifest` turns its bytes into frozen
dataclasses and is strict: an unknown field anywhere, an unknown step kind, a wrong type, a step
naming a file the manifest does not list, or an unsafe file path is a :class:`ManifestError`.
Times are RFC 3339 in UTC; durations are seconds. Time is never read here: callers pass
``reference_time`` (as python-tuf does), so tests control the clock.

Every record here and in :mod:`~vmbusops.bundle.steps` is converted to and from JSON by its
fields (:mod:`vmbusops.bundle.schema`): field order is member order in :meth:`Manifest.to_json`,
whose bytes the bundle id and signatures cover, so fields are never reordered.

Steps run in order on every target VM. A step kind is declared in ``bundle/steps.py`` only:

1. a :class:`StepKind` member (the name trust scopes and ``--steps`` use);
2. one frozen dataclass deriving from ``StepBase``, with ``kind`` set to that member, whose fields
   are the step's JSON members (a field that names bundle files is declared with
   ``bundle_path("file")``/``bundle_paths(...)``, which checks the path, makes
   :meth:`Manifest` check it is listed, and makes ``bundle build`` hash it), and a ``describe()``
   line for ``bundle inspect``;
3. the class's entry in the ``Step`` union, from which ``STEP_KINDS`` (kind -> class, used to read
   a step) is derived; an import-time check refuses a kind without exactly one class.

Nothing else in ``bundle/`` or ``cli/bundle_cmds.py`` names a kind. A manifest naming a kind this
version does not know is rejected, never skipped.

Targets: ``vms`` are VM names and globs (case-insensitive, as Hyper-V names are). ``groups``
(Hyper-V VM group names or globs) and ``tags`` (tag names kept in a VM's Notes, see
:mod:`vmbusops.vm_tags`), when given, narrow that set to VMs in one of those groups and carrying
one of those tags; without ``vms`` they select among all the host's VMs. They are resolved on the
host when the job starts (:mod:`vmbusops.engine.targets`), and the VMs they select are then checked
by name against the signer's trust scope: a VM outside it is left out of the job, so a group or a
tag never widens what a key may touch.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vmbusops.bundle.dsse import strict_json
from vmbusops.bundle.errors import ManifestError
from vmbusops.bundle.guard import Guard, Span, check_guard, guarded_spans
from vmbusops.bundle.member_paths import ENVELOPE_MEMBER, MAX_PATH_BYTES, check_bundle_path
from vmbusops.bundle.schema import (
    FieldReader,
    JsonRecord,
    bundle_path,
    format_time,
    integer,
    parse_time,
    seconds,
    spec,
    text,
)
from vmbusops.bundle.steps import (
    STEP_KINDS,
    CopyStep,
    DscMode,
    DscStep,
    PatchStep,
    RebootStep,
    RetryPolicy,
    ScriptStep,
    Step,
    StepKind,
    WaitReadyStep,
    step_from_dict,
)
from vmbusops.vm_tags import is_tag_name

__all__ = [  # the steps' names are re-exported: callers import every manifest type from here
    "ENVELOPE_MEMBER",
    "MAX_PATH_BYTES",
    "STEP_KINDS",
    "Amount",
    "CopyStep",
    "DscMode",
    "DscStep",
    "ExecutionPolicy",
    "FileEntry",
    "Guard",
    "Manifest",
    "MissedRunPolicy",
    "PatchStep",
    "RebootStep",
    "ResumePolicy",
    "RetryPolicy",
    "Schedule",
    "ScriptStep",
    "Span",
    "Step",
    "StepKind",
    "Targets",
    "WaitReadyStep",
    "check_bundle_path",
    "check_cron",
    "format_time",
    "manifest_from_dict",
    "manifest_to_dict",
    "parse_manifest",
    "parse_time",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VM_PATTERN = re.compile(r"[^\x00-\x1f/\\\"]{1,100}")
_TIMEZONE = re.compile(r"[A-Za-z_]+(/[A-Za-z0-9_+-]+)*")


class ResumePolicy(enum.StrEnum):
    """What the agent does with a run it finds unfinished after a restart."""

    RESUME = "resume"  # continue after the last completed step; re-run the interrupted one if idempotent
    RESTART = "restart"  # start the target over from the first step
    ABANDON = "abandon"  # mark unfinished targets failed


class MissedRunPolicy(enum.StrEnum):
    SKIP = "skip"  # a run whose window passed while the agent was down is not made up
    RUN_ONCE = "run-once"  # run once as soon as possible, however many were missed


# --- small values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Amount:
    """A count (``3``) or a share of the targets (``"25%"``)."""

    count: int | None = None
    percent: int | None = None

    def of(self, total: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return max(1, math.floor(total * self.percent / 100)) if total else 0

    def to_json(self) -> int | str:
        return self.count if self.count is not None else f"{self.percent}%"


def _amount(minimum: int) -> Any:
    def read(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> Amount:
        value = r.take(key, default)
        if value is None:
            assert isinstance(default, Amount)
            return default
        if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= 100_000:
            return Amount(count=value)
        if isinstance(value, str) and (m := re.fullmatch(r"([0-9]{1,3})%", value)) and 1 <= int(m[1]) <= 100:
            return Amount(percent=int(m[1]))
        raise ManifestError(f"{r.where}.{key} must be a count (>= {minimum}) or a percentage like '25%'")

    return spec(read, write=Amount.to_json)


@dataclass(frozen=True, slots=True, kw_only=True)
class Targets(JsonRecord):
    vms: tuple[str, ...] = field(
        default=(), metadata=spec(lambda r, key, default, known: r.texts(key, default, _VM_PATTERN))
    )
    groups: tuple[str, ...] = field(
        default=(), metadata=spec(lambda r, key, default, known: r.texts(key, default, _VM_PATTERN))
    )
    tags: tuple[str, ...] = field(
        default=(), metadata=spec(lambda r, key, default, known: r.texts(key, default, _VM_PATTERN))
    )

    def validate(self, where: str) -> None:
        if not (self.vms or self.groups or self.tags):
            raise ManifestError(f"{where}.vms must name at least one VM or glob (or give groups or tags)")
        bad = [t for t in self.tags if not is_tag_name(t)]
        if bad:
            raise ManifestError(
                f"{where}.tags: {bad[0]!r} is not a tag name (ASCII letters, digits, '.', '_' or '-', up to 64)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry(JsonRecord):
    path: str = field(metadata=bundle_path())
    size: int = field(metadata=integer(0, 2**40))
    sha256: str = field(metadata=text(_SHA256))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionPolicy(JsonRecord):
    max_concurrency: Amount = field(default_factory=lambda: Amount(count=4), metadata=_amount(1))
    max_errors: Amount = field(default_factory=lambda: Amount(count=0), metadata=_amount(0))
    target_timeout_seconds: float = field(default=3600.0, metadata=seconds())
    delivery_timeout_seconds: float = field(default=86400.0, metadata=seconds())
    resume: ResumePolicy = ResumePolicy.RESUME


_CRON_FIELD = re.compile(
    r"(\*|[0-9]{1,2}(-[0-9]{1,2})?)(/[0-9]{1,2})?(,(\*|[0-9]{1,2}(-[0-9]{1,2})?)(/[0-9]{1,2})?)*"
)
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def check_cron(expr: str, where: str) -> str:
    """Five numeric fields (minute hour day-of-month month day-of-week), each ``*``, ``N``, ``A-B``,
    with optional ``/STEP``, comma-separated."""
    fields = expr.split()
    if len(fields) != 5:
        raise ManifestError(f"{where} {expr!r} must have five fields: minute hour day month weekday")
    for text_, (lo, hi) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.fullmatch(text_):
            raise ManifestError(f"{where} {expr!r}: field {text_!r} is not valid cron syntax")
        for number in re.findall(r"(?<![/0-9])[0-9]+", text_):
            if not lo <= int(number) <= hi:
                raise ManifestError(f"{where} {expr!r}: {number} is outside {lo}-{hi}")
    return expr


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule(JsonRecord):
    """Runs start at ``cron`` ticks (five fields, in ``timezone``) plus up to ``jitter_seconds``;
    no target starts later than ``window_seconds - cutoff_seconds`` after the tick."""

    cron: str = field(
        metadata=spec(lambda r, key, default, known: check_cron(r.text(key, default), f"{r.where}.{key}"))
    )
    window_seconds: float = field(metadata=seconds())
    cutoff_seconds: float = field(default=0.0, metadata=seconds())
    jitter_seconds: float = field(default=0.0, metadata=seconds())
    missed: MissedRunPolicy = MissedRunPolicy.SKIP
    timezone: str = field(default="UTC", metadata=text(_TIMEZONE))

    def validate(self, where: str) -> None:
        if self.cutoff_seconds >= self.window_seconds:
            raise ManifestError(f"{where}.cutoff_seconds must be shorter than window_seconds")


# --- the manifest -------------------------------------------------------------------------------


def _bundle_id(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> str:
    raw: str = r.text(key, default)
    try:
        bundle_id = str(uuid.UUID(raw))
    except ValueError:
        raise ManifestError(f"manifest.id {raw!r} is not a UUID") from None
    if bundle_id != raw:
        raise ManifestError(f"manifest.id {raw!r} is not in canonical lowercase UUID form")
    return bundle_id


def _expires(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> datetime:
    expires = parse_time(r.take(key, default), f"{r.where}.{key}")
    if expires <= known["issued"]:
        raise ManifestError("manifest.expires must be after manifest.issued")
    return expires


def _steps(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> tuple[Step, ...]:
    raw = r.take(key, default)
    if not isinstance(raw, list) or not raw or len(raw) > 256:
        raise ManifestError("manifest.steps must be a list of 1 to 256 steps")
    return tuple(step_from_dict(s, i) for i, s in enumerate(raw))


def _files(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> tuple[FileEntry, ...]:
    raw = r.take(key, default)
    if not isinstance(raw, list) or len(raw) > 100_000:
        raise ManifestError("manifest.files must be a list")
    files: list[FileEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        entry = FileEntry.from_dict(item, f"manifest.files[{i}]")
        folded = entry.path.casefold()
        # Windows and macOS hosts fold case: two names that differ only in case are one file there.
        if folded in seen:
            raise ManifestError(
                f"manifest.files lists {entry.path!r} twice (names are compared case-insensitively)"
            )
        seen.add(folded)
        files.append(entry)
    for folded in seen:
        parts = folded.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in seen:
                raise ManifestError(
                    f"manifest.files lists {'/'.join(parts[:depth])!r} as a file and a folder"
                )
    return tuple(files)


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest(JsonRecord):
    name: str = field(metadata=text(_NAME))
    version: int = field(metadata=integer(1, 2**53))
    id: str = field(metadata=spec(_bundle_id))
    issued: datetime
    expires: datetime = field(metadata=spec(_expires))
    targets: Targets
    credential: str = field(metadata=text(_NAME))
    steps: tuple[Step, ...] = field(metadata=spec(_steps))
    execution: ExecutionPolicy = field(default_factory=ExecutionPolicy)
    schedule: Schedule | None = None
    files: tuple[FileEntry, ...] = field(metadata=spec(_files))
    #: How steps that say ``guard = "checkpoint"`` (or all, with ``all_steps``) are protected.
    guard: Guard | None = None

    def is_expired(self, reference_time: datetime, *, skew: timedelta = timedelta(0)) -> bool:
        return reference_time - skew >= self.expires

    def is_issued_in_future(self, reference_time: datetime, *, skew: timedelta = timedelta(0)) -> bool:
        return self.issued > reference_time + skew

    def step_kinds(self) -> frozenset[StepKind]:
        return frozenset(step.kind for step in self.steps)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def module_files(self, folder: str) -> tuple[FileEntry, ...]:
        prefix = folder.rstrip("/") + "/"
        return tuple(f for f in self.files if f.path.startswith(prefix))

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode("utf-8") + b"\n"

    def validate(self, where: str) -> None:
        """Every file a step names is listed; every folder it names holds a listed file."""
        listed = {f.path for f in self.files}
        for i, step in enumerate(self.steps):
            at = f"steps[{i}] ({step.name})"
            for path in step.files():
                if path not in listed:
                    raise ManifestError(f"{at} names {path!r}, which is not among the manifest's files")
            for folder in step.folders():
                if not self.module_files(folder):
                    raise ManifestError(f"{at} names module folder {folder!r}, which holds no files")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ManifestError("step names must be unique within a bundle")
        check_guard(self.guard, [s.guard is not None for s in self.steps], names)

    def guarded_spans(self) -> tuple[Span, ...]:
        """The runs of contiguous guarded steps, each under one checkpoint (none without a guard)."""
        return guarded_spans(self.guard, [s.guard is not None for s in self.steps])


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    return m.to_dict()


def manifest_from_dict(doc: object) -> Manifest:
    return Manifest.from_dict(doc, "manifest")


def parse_manifest(payload: bytes) -> Manifest:
    """The manifest from the envelope's (already verified) payload bytes."""
    return manifest_from_dict(strict_json(payload, what="manifest", error=ManifestError))
