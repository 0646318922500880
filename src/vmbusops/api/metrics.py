"""Prometheus metrics of one agent, in a registry of its own (several agents can share a process
in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vmbusops.guestops.supervisor import HostStatus


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

    def host_changed(self, status: HostStatus) -> None:
        """A :class:`~vmbusops.guestops.supervisor.HostSupervisor`'s ``on_change``."""
        self.host_up.labels(status.name).set(1 if status.up else 0)
        if status.reconnects > self._reconnects_seen:
            self.host_reconnects.labels(status.name).inc(status.reconnects - self._reconnects_seen)
            self._reconnects_seen = status.reconnects

    def render(self) -> bytes:
        return generate_latest(self.registry)
