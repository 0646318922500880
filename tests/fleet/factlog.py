"""A LOG stream built in memory, fact by fact, for tests of the projection and the planner."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.builders import manifest_doc, script

from vmbusops.engine.changes import RunChange, StepChange
from vmbusops.engine.changes_json import change_to_json
from vmbusops.engine.states import State
from vmbusops.fleet.broker import StreamMessage
from vmbusops.fleet.messages import (
    BatchFact,
    JobFact,
    LogFact,
    RunPlacement,
    encode,
)
from vmbusops.fleet.names import CTL_SUBJECT, host_log_subject
from vmbusops.records import OutputRecord, record_json

DIGEST = "ab" * 32
T0 = 1_800_000_000.0


class FactLog:
    def __init__(self) -> None:
        self.messages: list[StreamMessage] = []
        self.time = T0

    def add(self, fact: LogFact) -> StreamMessage:
        host = getattr(fact, "host", None) if fact.kind in ("batch", "batches", "moved", "refused") else None
        subject = CTL_SUBJECT if host is None else host_log_subject(host)
        message = StreamMessage(subject=subject, seq=len(self.messages) + 1, data=encode(fact))
        self.messages.append(message)
        return message

    def raw(self, subject: str, data: bytes) -> StreamMessage:
        message = StreamMessage(subject=subject, seq=len(self.messages) + 1, data=data)
        self.messages.append(message)
        return message

    def tick(self) -> float:
        self.time += 1.0
        return self.time

    def job(self, runs: list[tuple[str, str]], *, steps: int = 2, **execution: Any) -> JobFact:
        """A job over (vm, host) pairs with ``steps`` script steps."""
        doc = manifest_doc(
            [vm for vm, _ in runs],
            [script(f"s{i + 1}", f"echo {i + 1}") for i in range(steps)],
            execution=execution or None,
        )
        fact = JobFact(
            submission=uuid.uuid4().hex, bundle=DIGEST, envelope="{}", manifest=json.dumps(doc),
            source="api:test", submitter="tester", enable_guest_services=False,
            runs=tuple(RunPlacement(vm=vm, vm_id=f"id-{vm}", host=host) for vm, host in runs),
            time=self.tick(),
        )  # fmt: skip
        self.add(fact)
        return fact


def out(text: str, seq: int, step: str | None = "s1", attempt: int = 1, at: float = T0) -> tuple[Any, ...]:
    return (seq, step, attempt, "output", at, record_json(OutputRecord(value=text)))


def batch(host: str, job: int, run: int, epoch: int, n: int, records: list[Any], changes: list[dict[str, Any]], at: float = T0) -> BatchFact:
    return BatchFact(host=host, job=job, run=run, epoch=epoch, n=n, records=tuple(records), changes=tuple(changes), time=at)


def run_change(state: str | None, step: str | None, records: int, **more: Any) -> dict[str, Any]:
    """A run change as an agent forwards it (``engine.changes_json``, the run id left out)."""
    change = RunChange(run_id=0, state=State(state) if state else None, current_step=step, records=records, **more)
    return change_to_json(change, ids=False)


def step_change(index: int, state: str, **more: Any) -> dict[str, Any]:
    return change_to_json(StepChange(run_id=0, index=index, state=State(state), **more), ids=False)


def whole_run(host: str, job: int, run: int, epoch: int, *, first_n: int = 1, start_seq: int = 1, steps: int = 2, at: float = T0) -> list[BatchFact]:
    """The batches of a run that starts at step 0 and succeeds, one batch per step."""
    facts = []
    seq = start_seq
    n = first_n
    for i in range(steps):
        changes = []
        if i == 0:
            changes.append(run_change("in-progress", None, seq - 1, started_at=at))
        changes += [step_change(i, "in-progress", attempts=1, started_at=at, clear=True), run_change(None, f"s{i + 1}", seq - 1)]
        recs = [out(f"step {i + 1} line {k}", seq + k, f"s{i + 1}", 1, at) for k in range(3)]
        seq += 3
        changes.append(step_change(i, "success", finished_at=at))
        if i == steps - 1:
            changes.append(run_change("success", None, seq - 1, finished_at=at, excerpt=["done"]))
        facts.append(batch(host, job, run, epoch, n, recs, changes, at))
        n += 1
    return facts
