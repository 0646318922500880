"""The manifest's step kinds: one frozen dataclass each, listed once in :data:`Step`.

A step kind is declared here and nowhere else in ``bundle/``: a :class:`StepKind` member, a
:class:`StepBase` subclass with ``kind`` set to it, and the class's entry in :data:`Step` (which
:data:`STEP_KINDS` is derived from). Its JSON form, reading and validation come from its fields
(see :mod:`vmbusops.bundle.schema`); the bundle files it needs come from fields declared with
``bundle_path(...)`` / ``bundle_paths(...)``; ``bundle inspect`` shows :meth:`StepBase.describe`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias, get_args

from vmbusops.bundle.errors import ManifestError, UnknownStepKindError
from vmbusops.bundle.guard import GuardKind
from vmbusops.bundle.schema import (
    REQUIRED,
    FieldReader,
    JsonRecord,
    bundle_path,
    bundle_paths,
    guest_path,
    integer,
    number,
    seconds,
    spec,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KB = re.compile(r"(KB)?[0-9]{4,8}", re.IGNORECASE)
_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()-]{0,99}")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy(JsonRecord):
    """``attempts`` in all (1 = no retry); retry n waits ``backoff_seconds * backoff_factor**(n-1)``."""

    attempts: int = field(default=1, metadata=integer(1, 100))
    backoff_seconds: float = field(default=10.0, metadata=number(0, 86400))
    backoff_factor: float = field(default=2.0, metadata=number(1, 10))

    def delay_before_retry(self, retry: int) -> float:
        return float(self.backoff_seconds * self.backoff_factor ** (retry - 1))


def _step_name(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> str:
    """Unnamed steps are called by position and kind: ``2-script``."""
    name: str | None = r.text(key, None, _NAME)
    return name or str(known["default_name"])


def _reboot_count(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> int:
    """A step that may reboot may do so once unless it says otherwise."""
    count: int = r.integer(key, 1 if known["allow_reboot"] else 0, 0, 10)
    return count


_max_reboots = spec(_reboot_count)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBase(JsonRecord):
    kind: ClassVar[StepKind]
    name: str = field(metadata=spec(_step_name))
    timeout_seconds: float | None = field(default=None, metadata=seconds())
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    idempotent: bool = False
    #: ``"checkpoint"``: the step runs under a checkpoint of the VM (see :mod:`vmbusops.bundle.guard`).
    guard: GuardKind | None = field(
        default=None, metadata=spec(lambda r, key, default, known: r.choice(key, default, GuardKind))
    )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, **JsonRecord.to_dict(self)}

    def describe(self) -> str:
        """What the step does, in one line for ``bundle inspect``."""
        raise NotImplementedError

    def files(self) -> tuple[str, ...]:
        """The bundle files this step uses (each must be in the manifest's file list)."""
        return self.bundle_refs("file")

    def folders(self) -> tuple[str, ...]:
        """The bundle folders this step uses whole (each must hold at least one listed file)."""
        return self.bundle_refs("folder")


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyStep(StepBase):
    """Copy-VMFile one bundle file to a guest path (checked by :mod:`vmbusops.guest_paths`)."""

    kind: ClassVar[StepKind] = StepKind.COPY
    source: str = field(metadata=bundle_path("file"))
    destination: str = field(metadata=guest_path())
    overwrite: bool = True  # -Force
    create_full_path: bool = True  # -CreateFullPath

    def describe(self) -> str:
        return f"Copy-VMFile {self.source} -> {self.destination}" + (" (overwrite)" if self.overwrite else "")


def _inline_script(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> str | None:
    inline: str | None = r.text(key, default)
    if (known["file"] is None) == (inline is None):
        raise ManifestError(
            f"{r.where} needs exactly one of 'file' (a bundle file) and 'inline' (script text)"
        )
    return inline


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptStep(StepBase):
    """Run a PowerShell script in the guest: a bundle ``file`` or ``inline`` text (exactly one).

    A script that exits with 3010 or 1641 (the Windows Installer codes for "reboot required" and
    "reboot started") asks for a reboot: with ``allow_reboot`` the host restarts the VM, at most
    ``max_reboots`` times in the run; without it the run reports a reboot pending."""

    kind: ClassVar[StepKind] = StepKind.SCRIPT
    file: str | None = field(default=None, metadata=bundle_path("file"))
    inline: str | None = field(default=None, metadata=spec(_inline_script))
    arguments: tuple[str, ...] = field(
        default=(), metadata=spec(lambda r, key, default, known: r.texts(key, default, max_items=256))
    )
    allow_reboot: bool = False
    max_reboots: int = field(default=0, metadata=_max_reboots)

    def describe(self) -> str:
        body = self.file if self.file is not None else f"inline script ({len(self.inline or '')} chars)"
        return f"run {body}" + (f" {' '.join(self.arguments)}" if self.arguments else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class DscStep(StepBase):
    """Copy resource module folders and MOF documents in, then apply (or test) the configuration."""

    kind: ClassVar[StepKind] = StepKind.DSC
    mofs: tuple[str, ...] = field(metadata=bundle_paths("file", at_least_one="MOF document"))
    modules: tuple[str, ...] = field(default=(), metadata=bundle_paths("folder"))
    meta_config: str | None = field(default=None, metadata=bundle_path("file"))
    mode: DscMode = DscMode.APPLY
    allow_reboot: bool = False
    max_reboots: int = field(default=0, metadata=_max_reboots)

    def describe(self) -> str:
        what = f"DSC {self.mode.value} {', '.join(self.mofs)}"
        if self.modules:
            what += f" with modules {', '.join(self.modules)}"
        reboots = f"allowed (max {self.max_reboots})" if self.allow_reboot else "not allowed"
        return what + f"; reboots {reboots}"


def _kb_numbers(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> tuple[str, ...]:
    """``123456``, ``kb123456`` and ``KB123456`` all mean ``KB123456``."""
    return tuple(k.upper() if k.upper().startswith("KB") else f"KB{k}" for k in r.texts(key, default, _KB))


@dataclass(frozen=True, slots=True, kw_only=True)
class PatchStep(StepBase):
    """Install pending Windows updates through the Windows Update Agent in the guest.

    ``categories`` and ``kbs`` narrow the updates (empty: all); ``check_only`` lists what would be
    installed and changes nothing."""

    kind: ClassVar[StepKind] = StepKind.PATCH
    categories: tuple[str, ...] = field(
        default=(), metadata=spec(lambda r, key, default, known: r.texts(key, default, _CATEGORY, 64))
    )
    kbs: tuple[str, ...] = field(default=(), metadata=spec(_kb_numbers))
    check_only: bool = False
    allow_reboot: bool = False
    max_reboots: int = field(default=0, metadata=_max_reboots)

    def describe(self) -> str:
        scope = ", ".join((*self.categories, *self.kbs)) or "all pending updates"
        what = f"Windows Update {'check' if self.check_only else 'install'}: {scope}"
        if self.allow_reboot:
            what += f"; reboots allowed (max {self.max_reboots})"
        return what


@dataclass(frozen=True, slots=True, kw_only=True)
class RebootStep(StepBase):
    kind: ClassVar[StepKind] = StepKind.REBOOT

    def describe(self) -> str:
        return "restart the guest"


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitReadyStep(StepBase):
    kind: ClassVar[StepKind] = StepKind.WAIT_READY

    def describe(self) -> str:
        return "wait until the guest answers PowerShell Direct"


Step: TypeAlias = CopyStep | ScriptStep | DscStep | PatchStep | RebootStep | WaitReadyStep
"""Every step kind; the one list of them."""

STEP_KINDS: Mapping[StepKind, type[Step]] = {cls.kind: cls for cls in get_args(Step)}
if set(STEP_KINDS) != set(StepKind) or len(STEP_KINDS) != len(get_args(Step)):
    raise RuntimeError("every StepKind needs exactly one class in Step")  # pragma: no cover


def step_from_dict(value: object, index: int) -> Step:
    """Step ``index`` of a manifest: its ``kind`` picks the class, whose fields read the rest."""
    reader = FieldReader(value, f"steps[{index}]")
    raw_kind = reader.take("kind", REQUIRED)
    try:
        kind = StepKind(raw_kind)
    except ValueError:
        raise UnknownStepKindError(
            f"steps[{index}] has unknown kind {raw_kind!r};"
            f" known kinds: {', '.join(k.value for k in StepKind)}",
            hint="fix the step kind, or upgrade vmbusops on this host",
        ) from None
    return STEP_KINDS[kind].read_from(reader, {"default_name": f"{index + 1}-{kind.value}"})
