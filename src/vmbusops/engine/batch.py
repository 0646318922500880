"""Which step of a guest batch is running, read from the invoker's markers (sans-IO).

A batch of script steps runs in one guest invocation (see :mod:`.plan`); the invoker brackets each
step's records with a ``begin`` and an ``end`` marker. :class:`BatchTracker` is told each marker, each
error record and how the pipeline ended, and says what follows: a step begins, a step ended well, a
step ended badly and the batch must stop there, or (at the end) which step the batch failed at and
why. It does no I/O; :mod:`.executors.script` drives it from the record stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vmbusops.errors import FailureCode, VmbusOpsError
from vmbusops.records import PipelineState


class Next(enum.Enum):
    IGNORE = "ignore"  # a marker of no step of this batch
    BEGIN = "begin"  # the step begins: start its attempt and its timeout
    ENDED = "ended"  # the step ended well
    STOP = "stop"  # stop the batch here: a step failed, nothing after it may run


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """The step a batch failed at, why, and the error behind it (None: the step's own verdict)."""

    index: int
    message: str
    error: VmbusOpsError | None = None
    #: The step's own verdict's code (an exit code, error records); None: the error's, else ScriptFailed.
    code: str | None = None

    @property
    def failure_code(self) -> str:
        if self.code is not None:
            return self.code
        return self.error.code if self.error is not None else FailureCode.SCRIPT_FAILED


@dataclass(eq=False)
class BatchTracker:
    """The steps (indices into the bundle's steps) of one guest invocation."""

    indices: tuple[int, ...]
    #: The step whose records are arriving; None between steps.
    current: int | None = None
    ended: set[int] = field(default_factory=set)
    #: Per failed step, the message it fails with (and its code, when its exit gave one).
    failed: dict[int, str] = field(default_factory=dict)
    codes: dict[int, str] = field(default_factory=dict)
    _first_error: dict[int, str] = field(default_factory=dict)

    def begin(self, index: int) -> Next:
        if index not in self.indices:
            return Next.IGNORE
        if self.current is not None and self.current != index and self.current in self.failed:
            return Next.STOP  # the guest went on after a failed step: stop it here
        self.current = index
        return Next.BEGIN

    def end(self, index: int, failure: str | None, code: str | None = None) -> Next:
        """Step ``index`` ended; ``failure`` is what its exit says is wrong (None: it succeeded),
        ``code`` its failure code."""
        if index not in self.indices:
            return Next.IGNORE
        if index in self.failed:
            return Next.STOP
        self.ended.add(index)
        if failure is not None:
            said = self._first_error.get(index)
            self.failed[index] = f"{said} ({failure})" if said else failure
            if code is not None:
                self.codes[index] = code
            return Next.STOP  # before the next step begins
        self.current = None
        return Next.ENDED

    def error_record(self, message: str) -> None:
        """An error record arrived: the first of a step is the headline of its failure."""
        if self.current is not None:
            self._first_error.setdefault(self.current, message)

    def first_unended(self) -> int:
        return (
            self.current if self.current is not None else next(i for i in self.indices if i not in self.ended)
        )

    def finish(self, error: VmbusOpsError | None, state: PipelineState | None) -> BatchFailure | None:
        """How the invocation ended says how the batch did: None when every step that began
        succeeded (those that never began are planned again by the caller)."""
        if error is not None:
            return BatchFailure(self.first_unended(), str(error), error)
        if self.current is not None:
            if self.current in self.failed:
                return BatchFailure(self.current, self.failed[self.current], code=self.codes.get(self.current))
            if state is PipelineState.COMPLETED:
                return None
            return BatchFailure(
                self.current,
                f"the pipeline ended {state.value if state else 'without a state'}",
                code=FailureCode.CANCELLED if state is PipelineState.STOPPED else None,
            )
        bad = next((i for i in self.indices if i in self.failed), None)
        if bad is not None:
            return BatchFailure(bad, self.failed[bad], code=self.codes.get(bad))
        return None


__all__ = ["BatchFailure", "BatchTracker", "Next"]
