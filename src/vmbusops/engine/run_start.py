"""Where a fleet run stands when a host is given it: :class:`RunStart`.

A fleet run may move between hosts (its VM migrated, its host was lost); the host it moves to
runs it as a local one-VM job that goes on from where it stood (see
:meth:`.engine.Engine.run_fleet_run` and :meth:`.machine.RunMachine.carry_on`): each step's
state and attempts, and the number its next record takes, so that no step that succeeded runs
again and no record number is used twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmbusops.engine.states import State

#: The step states a run can go on from: not begun, done, or running when its host lost it
#: (running steps are then resumed or abandoned by the bundle's resume rules).
CARRIED_STATES = frozenset(
    {State.PENDING, State.SUCCESS, State.IN_PROGRESS, State.DELAYED, State.INTERRUPTED}
)


@dataclass(frozen=True, slots=True)
class RunStart:
    """A run's steps as they stand (one state and one attempt count per step of the bundle, in
    order) and the ``seq`` its next record takes."""

    step_states: tuple[State, ...]
    attempts: tuple[int, ...]
    next_seq: int

    def __post_init__(self) -> None:
        if len(self.step_states) != len(self.attempts):
            raise ValueError(
                f"a run start has {len(self.step_states)} step states but {len(self.attempts)} attempt counts"
            )
        for state in self.step_states:
            if not isinstance(state, State) or state not in CARRIED_STATES:
                allowed = ", ".join(sorted(s.value for s in CARRIED_STATES))
                raise ValueError(f"a run cannot go on from a step in state {state!r}; one of {allowed} expected")
        for attempts in self.attempts:
            if type(attempts) is not int or attempts < 0:
                raise ValueError(f"a step's attempts must be a whole number >= 0, not {attempts!r}")
        if type(self.next_seq) is not int or self.next_seq < 1:
            raise ValueError(f"a run start's next_seq must be a whole number >= 1, not {self.next_seq!r}")

    def check(self, steps: int) -> None:
        """Raise ValueError unless this start has one state per step of a bundle of ``steps`` steps."""
        if len(self.step_states) != steps:
            raise ValueError(
                f"the run start has {len(self.step_states)} step states but the bundle has {steps} steps"
            )


__all__ = ["CARRIED_STATES", "RunStart"]
