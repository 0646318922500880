"""Per-resource progress of one configuration, folded from LCM events (sans-IO).

The resource ids come from the MOF (so "n of m" is known before the LCM starts); events move each
resource through ``pending -> running -> in desired state | changed | failed | drifted``. A
resource that the LCM skipped because a reboot cut the run short stays pending, and the next run
after the reboot (``-UseExisting``) carries on in the same tracker, so progress across reboots is
one story.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vmbusops.dsc.lcm import (
    Event,
    LcmError,
    Operation,
    OperationEnded,
    OperationSkipped,
    OperationStarted,
    RebootRequired,
)


class ResourceState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    IN_DESIRED_STATE = "in desired state"
    CHANGED = "changed"
    FAILED = "failed"
    DRIFTED = "drifted"


_DONE = (ResourceState.IN_DESIRED_STATE, ResourceState.CHANGED, ResourceState.FAILED, ResourceState.DRIFTED)


@dataclass
class ConfigurationProgress:
    resources: dict[str, ResourceState] = field(default_factory=dict)
    current: str | None = None
    reboot_required: bool = False
    errors: list[str] = field(default_factory=list)
    _set_ran: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, resource_ids: tuple[str, ...]) -> ConfigurationProgress:
        return cls(resources=dict.fromkeys(resource_ids, ResourceState.PENDING))

    def begin_run(self) -> None:
        """A new LCM run (after a reboot): reboot and current are reset; outcomes are kept."""
        self.reboot_required = False
        self.current = None

    def feed(self, event: Event) -> bool:
        """Fold one event in; True if what an operator sees changed."""
        match event:
            case OperationStarted(operation=Operation.RESOURCE, resource=str(rid)):
                self.current = rid
                if self.resources.get(rid) not in _DONE or self.resources.get(rid) is ResourceState.DRIFTED:
                    self.resources[rid] = ResourceState.RUNNING
                return True
            case OperationStarted(operation=Operation.SET, resource=str(rid)):
                self._set_ran.add(rid)
                return False
            case OperationSkipped(operation=Operation.SET, resource=str(rid)):
                if self.resources.get(rid) is not ResourceState.CHANGED:  # changed before a reboot
                    self.resources[rid] = ResourceState.IN_DESIRED_STATE
                return True
            case OperationEnded(operation=Operation.TEST, resource=str(rid), result=bool(result)):
                # Test-DscConfiguration prints the verdict; nothing is set.
                self.resources[rid] = ResourceState.IN_DESIRED_STATE if result else ResourceState.DRIFTED
                return True
            case OperationEnded(operation=Operation.RESOURCE, resource=str(rid)):
                if self.resources.get(rid) is ResourceState.RUNNING:
                    self.resources[rid] = (
                        ResourceState.CHANGED if rid in self._set_ran else ResourceState.IN_DESIRED_STATE
                    )
                self.current = None
                return True
            case RebootRequired():
                changed = not self.reboot_required
                self.reboot_required = True
                return changed
            case LcmError(message=message):
                self.errors.append(message)
                if self.current is not None:
                    self.resources[self.current] = ResourceState.FAILED
                return True
        return False

    def mark_failed_current(self) -> None:
        if self.current is not None:
            self.resources[self.current] = ResourceState.FAILED

    def of_state(self, state: ResourceState) -> list[str]:
        return [r for r, s in self.resources.items() if s is state]

    @property
    def done(self) -> int:
        return sum(1 for s in self.resources.values() if s in _DONE)

    def line(self) -> str:
        """``3/7 [File]Index: 2 changed, 1 in desired state`` for the run view."""
        total = len(self.resources)
        counts = [
            f"{len(self.of_state(s))} {s.value}"
            for s in (ResourceState.CHANGED, ResourceState.IN_DESIRED_STATE, ResourceState.DRIFTED, ResourceState.FAILED)
            if self.of_state(s)
        ]
        now = f" {self.current}" if self.current else ""
        reboot = "; reboot required" if self.reboot_required else ""
        return f"{self.done}/{total}{now}" + (f": {', '.join(counts)}" if counts else "") + reboot
