"""Checkpoint guards in the manifest: which steps a checkpoint protects, and how it is judged.

A step may say ``guard = "checkpoint"``; the manifest's ``guard`` object (``[guard]`` in
``bundle.toml``) then says how every guarded step is protected::

    [guard]
    all_steps = false            # true: the whole run is one guarded span
    checkpoint = "production"    # production | production-or-standard
    min_free_gb = 10             # room the VM's checkpoint volume must have first
    [guard.health]               # exactly one of inline / dsc
    inline = "Get-Service W3SVC | Where-Object Status -ne 'Running' | ForEach-Object { exit 1 }"
    timeout = "5m"

Contiguous guarded steps form one *span*, protected by one checkpoint: taken before the span's
first step, removed once its last step succeeded and the health check passed, restored when a step
of the span fails, times out or is cancelled, or the health check fails (see
``docs/adr/0008-checkpoint-guards.md``). A ``guard`` object that protects no step, and a guarded
step without one, are refused. Only a trust scope with ``checkpoints = true`` may sign a bundle
that has a guard (:mod:`vmbusops.bundle.policy`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmbusops.bundle.errors import ManifestError
from vmbusops.bundle.schema import JsonRecord, number, seconds


class GuardKind(enum.StrEnum):
    CHECKPOINT = "checkpoint"


class CheckpointPolicy(enum.StrEnum):
    """Which checkpoint a guard accepts."""

    #: A production checkpoint (VSS in the guest: an application-consistent disk, no saved memory)
    #: or none: a VM that cannot take one is refused before anything runs.
    PRODUCTION = "production"
    #: A production checkpoint when the VM can take one, else a standard one (disk and memory as
    #: they are, with the guest's applications unaware).
    PRODUCTION_OR_STANDARD = "production-or-standard"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck(JsonRecord):
    """What must hold after the guarded steps: a script that succeeds (exit 0, no error record),
    or ``dsc = true``: Test-DscConfiguration in the guest reports the configuration in its desired
    state."""

    inline: str | None = None
    dsc: bool = False
    timeout_seconds: float = field(default=300.0, metadata=seconds())

    def validate(self, where: str) -> None:
        if (self.inline is None) == (not self.dsc):
            raise ManifestError(
                f"{where} needs exactly one of 'inline' (a script that must succeed) and 'dsc = true'"
                " (Test-DscConfiguration must report no drift)"
            )

    def describe(self) -> str:
        return "Test-DscConfiguration reports no drift" if self.dsc else f"script ({len(self.inline or '')} chars) succeeds"


@dataclass(frozen=True, slots=True, kw_only=True)
class Guard(JsonRecord):
    """How guarded steps are protected (the manifest's ``guard``)."""

    kind: GuardKind = GuardKind.CHECKPOINT
    #: The whole run is one guarded span, whatever its steps say.
    all_steps: bool = False
    checkpoint: CheckpointPolicy = CheckpointPolicy.PRODUCTION
    #: Free space, in GiB, the volume that holds the VM's checkpoints must have before one is taken.
    min_free_gb: float = field(default=10.0, metadata=number(0, 65536))
    health: HealthCheck


@dataclass(frozen=True, slots=True)
class Span:
    """Guarded steps ``first`` to ``last`` (indices, inclusive), under one checkpoint."""

    first: int
    last: int

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.first <= index <= self.last

    @property
    def indices(self) -> range:
        return range(self.first, self.last + 1)


def guarded_spans(guard: Guard | None, marked: Sequence[bool]) -> tuple[Span, ...]:
    """The spans of a run whose steps say ``marked`` (``guard = "checkpoint"``)."""
    if guard is None:
        return ()
    if guard.all_steps:
        return (Span(0, len(marked) - 1),) if marked else ()
    spans: list[Span] = []
    start: int | None = None
    for i, on in enumerate([*marked, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append(Span(start, i - 1))
            start = None
    return tuple(spans)


def check_guard(guard: Guard | None, marked: Sequence[bool], names: Sequence[str]) -> None:
    """A guarded step needs the manifest's ``guard``; a ``guard`` must protect some step."""
    if guard is None:
        for i, on in enumerate(marked):
            if on:
                raise ManifestError(
                    f"steps[{i}] ({names[i]}) says guard = \"checkpoint\", but the manifest has no"
                    " guard (its health check and checkpoint policy)",
                    hint="add a [guard] table with a [guard.health] check to bundle.toml",
                )
        return
    if not guard.all_steps and not any(marked):
        raise ManifestError(
            "manifest.guard protects no step",
            hint='set guard = "checkpoint" on the steps to protect, or all_steps = true in [guard]',
        )


__all__ = ["CheckpointPolicy", "Guard", "GuardKind", "HealthCheck", "Span", "check_guard", "guarded_spans"]
