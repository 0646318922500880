"""The signed manifest: what a bundle will do, where, with which credential, and with which files.

The manifest is JSON (the DSSE payload). :func:`parse_manifest` turns its bytes into frozen
dataclasses and is strict: an unknown field anywhere, an unknown step kind, a wrong type, a step
naming a file the manifest does not list, or an unsafe file path is a :class:`ManifestError`.
Times are RFC 3339 in UTC; durations are seconds. Time is never read here: callers pass
``reference_time`` (as python-tuf does), so tests control the clock.

Steps run in order on every target VM. Each kind is one dataclass; the engine matches on the
class. Adding a kind means one dataclass, one ``_parse_*`` function and one
entry in ``_STEP_PARSERS``; a manifest naming a kind this version does not know is rejected, never
skipped.

Targets: ``vms`` are VM names and globs (case-insensitive, as Hyper-V names are). ``groups`` and
``tags``, when given, narrow that set to VMs in one of those groups / carrying one of those tags;
they never add VMs, so a signer's VM scope bounds every bundle it signs.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeAlias

from vmbusops.bundle.dsse import strict_json
from vmbusops.bundle.errors import ManifestError, UnknownFieldError, UnknownStepKindError

ENVELOPE_MEMBER = "envelope.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+ -]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VM_PATTERN = re.compile(r"[^\x00-\x1f/\\\"]{1,100}")
MAX_PATH_BYTES = 255


class StepKind(enum.StrEnum):
    COPY = "copy"
    SCRIPT = "script"
    DSC = "dsc"
    PATCH = "patch"
    REBOOT = "reboot"
    WAIT_READY = "wait-ready"


class DscMode(enum.StrEnum):
    APPLY = "apply"  # Start-DscConfiguration
    TEST = "test"  # Test-DscConfiguration: report drift, change nothing


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """``attempts`` in all (1 = no retry); retry n waits ``backoff_seconds * backoff_factor**(n-1)``."""

    attempts: int = 1
    backoff_seconds: float = 10.0
    backoff_factor: float = 2.0

    def delay_before_retry(self, retry: int) -> float:
        return float(self.backoff_seconds * self.backoff_factor ** (retry - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Targets:
    vms: tuple[str, ...]
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionPolicy:
    max_concurrency: Amount = field(default_factory=lambda: Amount(count=4))
    max_errors: Amount = field(default_factory=lambda: Amount(count=0))
    target_timeout_seconds: float = 3600.0
    delivery_timeout_seconds: float = 86400.0
    resume: ResumePolicy = ResumePolicy.RESUME


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """Runs start at ``cron`` ticks (five fields, in ``timezone``) plus up to ``jitter_seconds``;
    no target starts later than ``window_seconds - cutoff_seconds`` after the tick."""

    cron: str
    window_seconds: float
    cutoff_seconds: float = 0.0
    jitter_seconds: float = 0.0
    missed: MissedRunPolicy = MissedRunPolicy.SKIP
    timezone: str = "UTC"


# --- steps --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBase:
    kind: ClassVar[StepKind]
    name: str
    timeout_seconds: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    idempotent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyStep(StepBase):
    """Copy-VMFile one bundle file to a guest path."""

    kind: ClassVar[StepKind] = StepKind.COPY
    source: str
    destination: str
    overwrite: bool = True  # -Force
    create_full_path: bool = True  # -CreateFullPath


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptStep(StepBase):
    """Run a PowerShell script in the guest: a bundle ``file`` or ``inline`` text (exactly one).

    A script that exits with 3010 or 1641 (the Windows Installer codes for "reboot required" and
    "reboot started") asks for a reboot: with ``allow_reboot`` the host restarts the VM, at most
    ``max_reboots`` times in the run; without it the run reports a reboot pending."""

    kind: ClassVar[StepKind] = StepKind.SCRIPT
    file: str | None = None
    inline: str | None = None
    arguments: tuple[str, ...] = ()
    allow_reboot: bool = False
    max_reboots: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DscStep(StepBase):
    """Copy resource module folders and MOF documents in, then apply (or test) the configuration."""

    kind: ClassVar[StepKind] = StepKind.DSC
    mofs: tuple[str, ...]
    modules: tuple[str, ...] = ()
    meta_config: str | None = None
    mode: DscMode = DscMode.APPLY
    allow_reboot: bool = False
    max_reboots: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PatchStep(StepBase):
    """Install pending Windows updates through the Windows Update Agent in the guest.

    ``categories`` and ``kbs`` narrow the updates (empty: all); ``check_only`` lists what would be
    installed and changes nothing."""

    kind: ClassVar[StepKind] = StepKind.PATCH
    categories: tuple[str, ...] = ()
    kbs: tuple[str, ...] = ()
    check_only: bool = False
    allow_reboot: bool = False
    max_reboots: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RebootStep(StepBase):
    kind: ClassVar[StepKind] = StepKind.REBOOT


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitReadyStep(StepBase):
    kind: ClassVar[StepKind] = StepKind.WAIT_READY


Step: TypeAlias = CopyStep | ScriptStep | DscStep | PatchStep | RebootStep | WaitReadyStep


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    name: str
    version: int
    id: str
    issued: datetime
    expires: datetime
    targets: Targets
    credential: str
    steps: tuple[Step, ...]
    execution: ExecutionPolicy
    schedule: Schedule | None
    files: tuple[FileEntry, ...]

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
        return json.dumps(manifest_to_dict(self), indent=1, sort_keys=False).encode("utf-8") + b"\n"


# --- writing ------------------------------------------------------------------------------------


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _step_to_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": step.kind.value, "name": step.name}
    if step.timeout_seconds is not None:
        out["timeout_seconds"] = step.timeout_seconds
    out["retry"] = {
        "attempts": step.retry.attempts,
        "backoff_seconds": step.retry.backoff_seconds,
        "backoff_factor": step.retry.backoff_factor,
    }
    out["idempotent"] = step.idempotent
    match step:
        case CopyStep():
            out |= {
                "source": step.source,
                "destination": step.destination,
                "overwrite": step.overwrite,
                "create_full_path": step.create_full_path,
            }
        case ScriptStep():
            if step.file is not None:
                out["file"] = step.file
            if step.inline is not None:
                out["inline"] = step.inline
            out["arguments"] = list(step.arguments)
            out |= {"allow_reboot": step.allow_reboot, "max_reboots": step.max_reboots}
        case DscStep():
            out |= {"mofs": list(step.mofs), "modules": list(step.modules)}
            if step.meta_config is not None:
                out["meta_config"] = step.meta_config
            out |= {
                "mode": step.mode.value,
                "allow_reboot": step.allow_reboot,
                "max_reboots": step.max_reboots,
            }
        case PatchStep():
            out |= {
                "categories": list(step.categories),
                "kbs": list(step.kbs),
                "check_only": step.check_only,
                "allow_reboot": step.allow_reboot,
                "max_reboots": step.max_reboots,
            }
        case RebootStep() | WaitReadyStep():
            pass
    return out


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": m.name,
        "version": m.version,
        "id": m.id,
        "issued": format_time(m.issued),
        "expires": format_time(m.expires),
        "targets": {
            "vms": list(m.targets.vms),
            "groups": list(m.targets.groups),
            "tags": list(m.targets.tags),
        },
        "credential": m.credential,
        "steps": [_step_to_dict(s) for s in m.steps],
        "execution": {
            "max_concurrency": m.execution.max_concurrency.to_json(),
            "max_errors": m.execution.max_errors.to_json(),
            "target_timeout_seconds": m.execution.target_timeout_seconds,
            "delivery_timeout_seconds": m.execution.delivery_timeout_seconds,
            "resume": m.execution.resume.value,
        },
    }
    if m.schedule is not None:
        s = m.schedule
        out["schedule"] = {
            "cron": s.cron,
            "window_seconds": s.window_seconds,
            "cutoff_seconds": s.cutoff_seconds,
            "jitter_seconds": s.jitter_seconds,
            "missed": s.missed.value,
            "timezone": s.timezone,
        }
    out["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in m.files]
    return out


# --- reading ------------------------------------------------------------------------------------


class _Fields:
    """Takes fields out of one JSON object; whatever is left at :meth:`done` is an unknown field."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} must be an object")
        self._obj: dict[str, Any] = dict(obj)
        self.where = where

    def _take(self, key: str, required: bool) -> Any:
        if key not in self._obj:
            if required:
                raise ManifestError(f"{self.where} lacks the required field {key!r}")
            return None
        return self._obj.pop(key)

    def _bad(self, key: str, want: str) -> ManifestError:
        return ManifestError(f"{self.where}.{key} must be {want}")

    def text(self, key: str, *, required: bool = True, pattern: re.Pattern[str] | None = None) -> Any:
        v = self._take(key, required)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v or (pattern is not None and not pattern.fullmatch(v)):
            raise self._bad(key, "a non-empty string" + (f" matching {pattern.pattern}" if pattern else ""))
        return v

    def integer(self, key: str, *, default: int | None = None, minimum: int = 0, maximum: int = 2**53) -> int:
        v = self._take(key, default is None)
        if v is None:
            assert default is not None
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            raise self._bad(key, f"an integer from {minimum} to {maximum}")
        return v

    def seconds(self, key: str, *, default: float | None, required: bool = False) -> Any:
        v = self._take(key, required)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 <= v <= 366 * 86400):
            raise self._bad(key, "a number of seconds from 0 to one year")
        return float(v)

    def number(self, key: str, *, default: float, minimum: float, maximum: float) -> float:
        v = self._take(key, False)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or not minimum <= v <= maximum:
            raise self._bad(key, f"a number from {minimum} to {maximum}")
        return float(v)

    def flag(self, key: str, *, default: bool) -> bool:
        v = self._take(key, False)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(key, "true or false")
        return v

    def texts(
        self,
        key: str,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        max_items: int = 1024,
    ) -> tuple[str, ...]:
        v = self._take(key, required)
        if v is None:
            return ()
        if not isinstance(v, list) or len(v) > max_items:
            raise self._bad(key, f"a list of at most {max_items} strings")
        for item in v:
            if not isinstance(item, str) or not item or (pattern is not None and not pattern.fullmatch(item)):
                raise self._bad(
                    key, "a list of non-empty strings" + (" (allowed characters only)" if pattern else "")
                )
        return tuple(v)

    def obj(self, key: str, *, required: bool = False) -> Any:
        return self._take(key, required)

    def choice(self, key: str, cls: type[enum.StrEnum], default: Any) -> Any:
        v = self._take(key, False)
        if v is None:
            return default
        try:
            return cls(v)
        except ValueError:
            raise self._bad(key, "one of " + ", ".join(m.value for m in cls)) from None

    def done(self) -> None:
        if self._obj:
            names = ", ".join(repr(k) for k in sorted(self._obj))
            raise UnknownFieldError(
                f"{self.where} has unknown field(s) {names}",
                hint="fix the field name in bundle.toml, or upgrade vmbusops on this host",
            )


def check_bundle_path(path: str, *, what: str = "file path") -> str:
    """A relative POSIX path with plain components: no ``..``, no absolute, drive or UNC paths,
    no backslashes, no control characters. The same check guards manifest entries and tar members."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError(f"{what} {path!r} is empty or longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part in ("", ".", "..") or not _PATH_COMPONENT.fullmatch(part) or part.endswith((" ", ".")):
            raise ManifestError(
                f"{what} {path!r} is not a plain relative path (component {part!r})",
                hint="use relative paths of letters, digits, '._+- ' separated by '/'",
            )
    if path == ENVELOPE_MEMBER:
        raise ManifestError(f"{what} {path!r} is reserved for the signature envelope")
    return path


def parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise ManifestError(f"{where} must be an RFC 3339 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ManifestError(f"{where} {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ManifestError(f"{where} {value!r} has no time zone; use UTC ('Z')")
    return parsed.astimezone(UTC)


def _amount(value: object, where: str, *, minimum: int) -> Amount:
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= 100_000:
        return Amount(count=value)
    if isinstance(value, str) and (m := re.fullmatch(r"([0-9]{1,3})%", value)) and 1 <= int(m[1]) <= 100:
        return Amount(percent=int(m[1]))
    raise ManifestError(f"{where} must be a count (>= {minimum}) or a percentage like '25%'")


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
    for text, (lo, hi) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.fullmatch(text):
            raise ManifestError(f"{where} {expr!r}: field {text!r} is not valid cron syntax")
        for number in re.findall(r"(?<![/0-9])[0-9]+", text):
            if not lo <= int(number) <= hi:
                raise ManifestError(f"{where} {expr!r}: {number} is outside {lo}-{hi}")
    return expr


def _retry(value: object, where: str) -> RetryPolicy:
    if value is None:
        return RetryPolicy()
    f = _Fields(value, where)
    policy = RetryPolicy(
        attempts=f.integer("attempts", default=1, minimum=1, maximum=100),
        backoff_seconds=f.number("backoff_seconds", default=10.0, minimum=0, maximum=86400),
        backoff_factor=f.number("backoff_factor", default=2.0, minimum=1, maximum=10),
    )
    f.done()
    return policy


def _common(f: _Fields, index: int, kind: StepKind) -> dict[str, Any]:
    return {
        "name": f.text("name", required=False, pattern=_NAME) or f"{index + 1}-{kind.value}",
        "timeout_seconds": f.seconds("timeout_seconds", default=None),
        "retry": _retry(f.obj("retry"), f"{f.where}.retry"),
        "idempotent": f.flag("idempotent", default=False),
    }


def _parse_copy(f: _Fields, index: int) -> CopyStep:
    return CopyStep(
        **_common(f, index, StepKind.COPY),
        source=check_bundle_path(f.text("source"), what=f"{f.where}.source"),
        destination=f.text("destination"),
        overwrite=f.flag("overwrite", default=True),
        create_full_path=f.flag("create_full_path", default=True),
    )


def _parse_script(f: _Fields, index: int) -> ScriptStep:
    common = _common(f, index, StepKind.SCRIPT)
    file = f.text("file", required=False)
    inline = f.text("inline", required=False)
    if (file is None) == (inline is None):
        raise ManifestError(
            f"{f.where} needs exactly one of 'file' (a bundle file) and 'inline' (script text)"
        )
    if file is not None:
        check_bundle_path(file, what=f"{f.where}.file")
    arguments = f.texts("arguments", max_items=256)
    allow_reboot = f.flag("allow_reboot", default=False)
    max_reboots = f.integer("max_reboots", default=1 if allow_reboot else 0, minimum=0, maximum=10)
    return ScriptStep(
        **common,
        file=file,
        inline=inline,
        arguments=arguments,
        allow_reboot=allow_reboot,
        max_reboots=max_reboots,
    )


def _parse_dsc(f: _Fields, index: int) -> DscStep:
    common = _common(f, index, StepKind.DSC)
    mofs = f.texts("mofs", required=True)
    if not mofs:
        raise ManifestError(f"{f.where}.mofs must name at least one MOF document")
    modules = f.texts("modules")
    for p in (*mofs, *modules):
        check_bundle_path(p, what=f"{f.where} path")
    meta = f.text("meta_config", required=False)
    if meta is not None:
        check_bundle_path(meta, what=f"{f.where}.meta_config")
    mode = f.choice("mode", DscMode, DscMode.APPLY)
    allow_reboot = f.flag("allow_reboot", default=False)
    max_reboots = f.integer("max_reboots", default=1 if allow_reboot else 0, minimum=0, maximum=10)
    return DscStep(
        **common,
        mofs=mofs,
        modules=modules,
        meta_config=meta,
        mode=mode,
        allow_reboot=allow_reboot,
        max_reboots=max_reboots,
    )


_KB = re.compile(r"(KB)?[0-9]{4,8}", re.IGNORECASE)
_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()-]{0,99}")


def _parse_patch(f: _Fields, index: int) -> PatchStep:
    common = _common(f, index, StepKind.PATCH)
    allow_reboot = f.flag("allow_reboot", default=False)
    return PatchStep(
        **common,
        categories=f.texts("categories", pattern=_CATEGORY, max_items=64),
        kbs=tuple(k.upper() if k.upper().startswith("KB") else f"KB{k}" for k in f.texts("kbs", pattern=_KB)),
        check_only=f.flag("check_only", default=False),
        allow_reboot=allow_reboot,
        max_reboots=f.integer("max_reboots", default=1 if allow_reboot else 0, minimum=0, maximum=10),
    )


def _parse_reboot(f: _Fields, index: int) -> RebootStep:
    return RebootStep(**_common(f, index, StepKind.REBOOT))


def _parse_wait_ready(f: _Fields, index: int) -> WaitReadyStep:
    return WaitReadyStep(**_common(f, index, StepKind.WAIT_READY))


_STEP_PARSERS: Mapping[StepKind, Any] = {
    StepKind.COPY: _parse_copy,
    StepKind.SCRIPT: _parse_script,
    StepKind.DSC: _parse_dsc,
    StepKind.PATCH: _parse_patch,
    StepKind.REBOOT: _parse_reboot,
    StepKind.WAIT_READY: _parse_wait_ready,
}


def _parse_step(value: object, index: int) -> Step:
    f = _Fields(value, f"steps[{index}]")
    raw_kind = f.obj("kind", required=True)
    try:
        kind = StepKind(raw_kind)
    except ValueError:
        raise UnknownStepKindError(
            f"steps[{index}] has unknown kind {raw_kind!r};"
            f" known kinds: {', '.join(k.value for k in StepKind)}",
            hint="fix the step kind, or upgrade vmbusops on this host",
        ) from None
    step: Step = _STEP_PARSERS[kind](f, index)
    f.done()
    return step


def _check_references(m: Manifest) -> None:
    listed = {f.path for f in m.files}

    def need(path: str, where: str) -> None:
        if path not in listed:
            raise ManifestError(f"{where} names {path!r}, which is not among the manifest's files")

    for i, step in enumerate(m.steps):
        where = f"steps[{i}] ({step.name})"
        match step:
            case CopyStep():
                need(step.source, where)
            case ScriptStep() if step.file is not None:
                need(step.file, where)
            case DscStep():
                for mof in step.mofs:
                    need(mof, where)
                if step.meta_config is not None:
                    need(step.meta_config, where)
                for module in step.modules:
                    if not m.module_files(module):
                        raise ManifestError(f"{where} names module folder {module!r}, which holds no files")
            case _:
                pass
    names = [s.name for s in m.steps]
    if len(set(names)) != len(names):
        raise ManifestError("step names must be unique within a bundle")


def manifest_from_dict(doc: object) -> Manifest:
    f = _Fields(doc, "manifest")
    name = f.text("name", pattern=_NAME)
    version = f.integer("version", minimum=1, maximum=2**53)
    raw_id = f.text("id")
    try:
        bundle_id = str(uuid.UUID(raw_id))
    except ValueError:
        raise ManifestError(f"manifest.id {raw_id!r} is not a UUID") from None
    if bundle_id != raw_id:
        raise ManifestError(f"manifest.id {raw_id!r} is not in canonical lowercase UUID form")
    issued = parse_time(f.obj("issued", required=True), "manifest.issued")
    expires = parse_time(f.obj("expires", required=True), "manifest.expires")
    if expires <= issued:
        raise ManifestError("manifest.expires must be after manifest.issued")

    t = _Fields(f.obj("targets", required=True), "manifest.targets")
    targets = Targets(
        vms=t.texts("vms", required=True, pattern=_VM_PATTERN),
        groups=t.texts("groups", pattern=_VM_PATTERN),
        tags=t.texts("tags", pattern=_VM_PATTERN),
    )
    t.done()
    if not targets.vms:
        raise ManifestError("manifest.targets.vms must name at least one VM or glob")

    credential = f.text("credential", pattern=_NAME)

    raw_steps = f.obj("steps", required=True)
    if not isinstance(raw_steps, list) or not raw_steps or len(raw_steps) > 256:
        raise ManifestError("manifest.steps must be a list of 1 to 256 steps")
    steps = tuple(_parse_step(s, i) for i, s in enumerate(raw_steps))

    raw_exec = f.obj("execution")
    e = _Fields(raw_exec if raw_exec is not None else {}, "manifest.execution")
    defaults = ExecutionPolicy()
    mc = e.obj("max_concurrency")
    me = e.obj("max_errors")
    execution = ExecutionPolicy(
        max_concurrency=defaults.max_concurrency
        if mc is None
        else _amount(mc, "manifest.execution.max_concurrency", minimum=1),
        max_errors=defaults.max_errors
        if me is None
        else _amount(me, "manifest.execution.max_errors", minimum=0),
        target_timeout_seconds=e.seconds("target_timeout_seconds", default=defaults.target_timeout_seconds),
        delivery_timeout_seconds=e.seconds(
            "delivery_timeout_seconds", default=defaults.delivery_timeout_seconds
        ),
        resume=e.choice("resume", ResumePolicy, defaults.resume),
    )
    e.done()

    schedule: Schedule | None = None
    raw_sched = f.obj("schedule")
    if raw_sched is not None:
        s = _Fields(raw_sched, "manifest.schedule")
        schedule = Schedule(
            cron=check_cron(s.text("cron"), "manifest.schedule.cron"),
            window_seconds=s.seconds("window_seconds", default=None, required=True),
            cutoff_seconds=s.seconds("cutoff_seconds", default=0.0),
            jitter_seconds=s.seconds("jitter_seconds", default=0.0),
            missed=s.choice("missed", MissedRunPolicy, MissedRunPolicy.SKIP),
            timezone=s.text("timezone", required=False, pattern=re.compile(r"[A-Za-z_]+(/[A-Za-z0-9_+-]+)*"))
            or "UTC",
        )
        s.done()
        if schedule.cutoff_seconds >= schedule.window_seconds:
            raise ManifestError("manifest.schedule.cutoff_seconds must be shorter than window_seconds")

    raw_files = f.obj("files", required=True)
    if not isinstance(raw_files, list) or len(raw_files) > 100_000:
        raise ManifestError("manifest.files must be a list")
    files: list[FileEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_files):
        ff = _Fields(raw, f"manifest.files[{i}]")
        path = check_bundle_path(ff.text("path"), what=f"manifest.files[{i}].path")
        entry = FileEntry(
            path=path,
            size=ff.integer("size", minimum=0, maximum=2**40),
            sha256=ff.text("sha256", pattern=_SHA256),
        )
        ff.done()
        folded = path.casefold()
        # Windows and macOS hosts fold case: two names that differ only in case are one file there.
        if folded in seen:
            raise ManifestError(
                f"manifest.files lists {path!r} twice (names are compared case-insensitively)"
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
    f.done()

    manifest = Manifest(
        name=name,
        version=version,
        id=bundle_id,
        issued=issued,
        expires=expires,
        targets=targets,
        credential=credential,
        steps=steps,
        execution=execution,
        schedule=schedule,
        files=tuple(files),
    )
    _check_references(manifest)
    return manifest


def parse_manifest(payload: bytes) -> Manifest:
    """The manifest from the envelope's (already verified) payload bytes."""
    return manifest_from_dict(strict_json(payload, what="manifest", error=ManifestError))
