"""Prometheus metrics of one agent, in a registry of its own (several agents can share a process
in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vmbusops.engine.journal import RunView
from vmbusops.engine.states import State
from vmbusops.errors import FailureCode
from vmbusops.guestops.classify import classify
from vmbusops.guestops.supervisor import HostStatus
from vmbusops.records import ErrorRecord

#: Run durations: from seconds (a script) to hours (patching with reboots).
RUN_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, float("inf"))
#: The failure code of a run whose journal has none (written before runs carried a code): the
#: code its end state implies.
_CODE_OF_STATE = {
    State.DELIVERY_TIMED_OUT: FailureCode.DELIVERY_TIMEOUT.value,
    State.EXECUTION_TIMED_OUT: FailureCode.TIMEOUT.value,
    State.CANCELLED: FailureCode.CANCELLED.value,
    State.SKIPPED: FailureCode.SKIPPED.value,
    State.INTERRUPTED: "Interrupted",
}


def failure_code(run: RunView) -> str:
    """A run's failure code, for the ``code`` label: ``none`` for a success, else the code the
    engine journaled (:class:`~vmbusops.errors.FailureCode`); for a run journaled without one,
    what its end state implies, or the class its error message classifies as."""
    if run.state is State.SUCCESS:
        return "none"
    if run.code:
        return run.code
    code = _CODE_OF_STATE.get(run.state)
    if code is not None:
        return code
    if run.error:
        return classify(run.vm, ErrorRecord(message=run.error)).code.value
    return FailureCode.GUEST_ERROR.value


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submissions = Counter(
            "vmbusops_submissions", "Bundles submitted, by outcome", ["outcome"], registry=self.registry
        )
        self.refusals = Counter(
            "vmbusops_refusals", "Requests refused, by reason", ["reason"], registry=self.registry
        )
        self.records = Counter(
            "vmbusops_records", "Guest records the engine received", registry=self.registry
        )
        self.records_streamed = Counter(
            "vmbusops_records_streamed", "Records sent to stream followers", registry=self.registry
        )
        self.jobs_running = Gauge(
            "vmbusops_jobs_running", "Jobs running in this agent", registry=self.registry
        )
        #: Set to read the journal's size when scraped (the database file and its write-ahead log).
        self.journal_bytes = Gauge(
            "vmbusops_journal_bytes", "Size of the journal on disk", registry=self.registry
        )
        self.followers = Gauge("vmbusops_stream_followers", "Open event streams", registry=self.registry)
        self.scheduled_runs = Counter(
            "vmbusops_scheduled_runs", "Schedule ticks, by outcome", ["outcome"], registry=self.registry
        )
        self.runs = Counter(
            "vmbusops_runs", "Runs that ended, by outcome (their state) and failure code",
            ["outcome", "code"], registry=self.registry,
        )  # fmt: skip
        self.run_seconds = Histogram(
            "vmbusops_run_seconds", "How long runs took, start to end, by outcome",
            ["outcome"], buckets=RUN_SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.submit_seconds = Histogram(
            "vmbusops_submit_seconds", "Time to verify a bundle and start its job", registry=self.registry
        )

        self.host_up = Gauge(
            "vmbusops_host_up", "1 while the Hyper-V host connection is up", ["host"], registry=self.registry
        )
        self.host_reconnects = Counter(
            "vmbusops_host_reconnects", "Host connections reopened after one died", ["host"], registry=self.registry
        )
        self._reconnects_seen = 0

    def runs_ended(self, runs: list[RunView]) -> None:
        """A job's runs, once it has ended: each counted by outcome and code, and timed."""
        for run in runs:
            if run.state.active:
                continue
            self.runs.labels(run.state.value, failure_code(run)).inc()
            if run.started_at is not None and run.finished_at is not None:
                self.run_seconds.labels(run.state.value).observe(max(0.0, run.finished_at - run.started_at))

    def host_changed(self, status: HostStatus) -> None:
        """A :class:`~vmbusops.guestops.supervisor.HostSupervisor`'s ``on_change``."""
        self.host_up.labels(status.name).set(1 if status.up else 0)
        if status.reconnects > self._reconnects_seen:
            self.host_reconnects.labels(status.name).inc(status.reconnects - self._reconnects_seen)
            self._reconnects_seen = status.reconnects

    def render(self) -> bytes:
        return generate_latest(self.registry)
