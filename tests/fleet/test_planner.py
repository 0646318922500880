"""The active controller's decisions, without a broker: the planner over a real projection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.fleet.factlog import FactLog, batch, run_change, step_change, whole_run

from vmbusops.engine.states import State
from vmbusops.fleet import planner as planner_module
from vmbusops.fleet.broker import KvEntry
from vmbusops.fleet.messages import (
    VERSION,
    CancelFact,
    CancelWork,
    DispatchFact,
    DispatchWork,
    LostFact,
    MovedFact,
    SkipFact,
)
from vmbusops.fleet.planner import (
    Decide,
    HostView,
    HostWatch,
    Lease,
    Placed,
    Planner,
    note_boots,
    work_protocol,
)
from vmbusops.fleet.projection import Projection
from vmbusops.fleet.store import FleetJournal
from vmbusops.owner import current_owner


class Fleet:
    """A log, its projection and a planner; hosts and placement set by the test."""

    def __init__(self, tmp_path: Path, **planner: Any) -> None:
        self.log = FactLog()
        self.projection = Projection(FleetJournal(tmp_path / "ctl.sqlite"), current_owner())
        self.planner = Planner(controller="c1", host_ttl=2.0, placement_timeout=30.0, **planner)
        self.hosts: dict[str, HostView] = {}
        self.placement: dict[str, Placed] = {}
        self.now = 0.0
        #: The placement bucket's revisions (every write is a new one, as in a KV bucket).
        self.revision = 0

    def host(self, name: str, *, alive: bool = True, boot: str = "b1") -> None:
        self.hosts[name] = HostView(host=name, cluster=None, boot=boot, alive=alive, seen=self.now)

    def place(self, vm: str, host: str) -> None:
        self.revision += 1
        self.placement[f"id-{vm}"] = Placed(
            vm=vm, vm_id=f"id-{vm}", host=host, cluster=None, state="Running", boot="b1", revision=self.revision
        )

    def fact(self, fact: Any) -> None:
        self.projection.apply(self.log.add(fact))

    def step(self) -> list[Any]:
        """One pass: decisions go to the log and are applied; what goes to hosts is returned."""
        for m in self.log.messages[self.projection.last_seq():]:
            self.projection.apply(m)
        jobs = self.projection.journal.active_jobs()
        starts = {r.run_id: self.projection.journal.run_start(r.run_id) for j in jobs for r in j.runs if r.dispatched}
        actions = self.planner.plan(jobs, self.hosts, self.placement, starts, now=self.now, wall=self.log.tick())
        sends = []
        for a in actions:
            if isinstance(a, Decide):
                self.fact(a.fact)
            else:
                sends.append(a)
        return [*[a.fact for a in actions if isinstance(a, Decide)], *sends]

    def runs(self) -> list[Any]:
        return self.projection.journal.fleet_runs(1)


def dispatches(actions: list[Any]) -> list[tuple[int, str, int]]:
    return [(a.run, a.host, a.epoch) for a in actions if isinstance(a, DispatchFact)]


def test_canary_runs_alone_then_the_rest_within_max_concurrency(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=1)
    for h in ("hv1", "hv2", "hv3"):
        f.host(h)
    vms = [("vm1", "hv1"), ("vm2", "hv2"), ("vm3", "hv3"), ("vm4", "hv1")]
    for vm, h in vms:
        f.place(vm, h)
    f.log.job(vms, max_concurrency=2)
    first = f.step()
    assert dispatches(first) == [(1, "hv1", 1)]
    # The WORK goes out once the dispatch is applied, from the projection's start.
    sends = f.step()
    assert [(s.host, type(s.work).__name__) for s in sends] == [("hv1", "DispatchWork")]
    work = sends[0].work
    assert isinstance(work, DispatchWork) and work.start.next_seq == 1 and work.start.step_states == ("pending", "pending")
    assert f.step() == []  # sent once per term
    for b in whole_run("hv1", 1, 1, 1):
        f.fact(b)
    assert dispatches(f.step()) == [(2, "hv2", 1), (3, "hv3", 1)]


def test_a_failed_canary_skips_the_rest(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=1)
    f.host("hv1")
    f.place("vm1", "hv1")
    f.place("vm2", "hv1")
    f.log.job([("vm1", "hv1"), ("vm2", "hv1")], max_errors=5)
    f.step()
    f.fact(batch("hv1", 1, 1, 1, 1, [], [run_change("in-progress", None, 0), step_change(0, "failed"), step_change(1, "skipped"), run_change("failed", None, 0, code="ScriptFailed")]))
    actions = f.step()
    assert [(a.run, a.code) for a in actions if isinstance(a, SkipFact)] == [(2, "CanaryFailed")]
    assert f.projection.journal.job(1).state is State.FAILED


def test_max_errors_over_the_whole_job_skips_what_has_not_started(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    for i in (1, 2, 3):
        f.place(f"vm{i}", "hv1")
    f.log.job([("vm1", "hv1"), ("vm2", "hv1"), ("vm3", "hv1")], max_concurrency=1, max_errors=0)
    assert dispatches(f.step()) == [(1, "hv1", 1)]
    f.fact(batch("hv1", 1, 1, 1, 1, [], [run_change("in-progress", None, 0), run_change("failed", None, 0, code="ScriptFailed")]))
    actions = f.step()
    assert sorted(a.run for a in actions if isinstance(a, SkipFact)) == [2, 3]


def test_a_dead_hosts_run_is_lost_then_dispatched_where_its_vm_shows_up(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    f.host("hv2")
    f.place("vm1", "hv1")
    f.log.job([("vm1", "hv1")])
    f.step()
    f.step()  # the WORK
    f.fact(whole_run("hv1", 1, 1, 1)[0])
    f.host("hv1", alive=False)
    actions = f.step()
    assert [type(a).__name__ for a in actions] == ["LostFact"]
    assert f.step() == []  # the VM is still placed on the dead host
    f.place("vm1", "hv2")
    actions = f.step()
    assert dispatches(actions) == [(1, "hv2", 2)]
    sends = f.step()
    work = sends[0].work
    assert sends[0].host == "hv2" and isinstance(work, DispatchWork)
    # Step 1 finished on hv1 is not run again; the records continue after the two notes.
    assert work.start.step_states == ("success", "pending") and work.start.next_seq == 6


def test_a_restarted_agent_loses_its_runs_and_gets_them_again(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1", boot="b1")
    f.place("vm1", "hv1")
    f.log.job([("vm1", "hv1")])
    f.step()
    f.step()
    f.host("hv1", boot="b2")
    assert [type(a).__name__ for a in f.step()] == ["LostFact"]
    assert dispatches(f.step()) == [(1, "hv1", 2)]


def test_same_host_same_boot_waits_a_host_ttl_before_dispatching_again(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    f.place("vm1", "hv1")
    f.log.job([("vm1", "hv1")])
    f.step()
    f.step()
    f.host("hv1", alive=False)
    f.step()
    f.host("hv1")
    assert f.step() == []
    f.now += 2.0
    assert dispatches(f.step()) == [(1, "hv1", 2)]


def test_a_moved_run_is_not_sent_back_to_the_host_it_left_on_that_hosts_stale_placement(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("HV-A")
    f.host("HV-B")
    f.place("web01", "HV-A")
    f.log.job([("web01", "HV-A")])
    f.step()
    f.step()
    f.fact(whole_run("HV-A", 1, 1, 1)[0])
    # Live-migrated: HV-A's agent says so before HV-B's agent has written the VM's placement.
    f.fact(MovedFact(host="HV-A", job=1, run=1, epoch=1, reason="VM web01 is no longer on host HV-A", time=f.log.tick()))
    assert dispatches(f.step()) == []
    assert dispatches(f.step()) == []
    f.place("web01", "HV-B")
    assert dispatches(f.step()) == [(1, "HV-B", 2)]


def test_a_moved_run_goes_back_to_the_host_it_left_once_that_host_places_its_vm_again(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("HV-A")
    f.host("HV-B")
    f.place("web01", "HV-A")
    f.log.job([("web01", "HV-A")])
    f.step()
    f.step()
    f.fact(MovedFact(host="HV-A", job=1, run=1, epoch=1, reason="gone", time=f.log.tick()))
    assert dispatches(f.step()) == []
    f.place("web01", "HV-A")  # migrated back: HV-A's agent wrote the entry again
    assert dispatches(f.step()) == [(1, "HV-A", 2)]


def test_a_moved_run_goes_back_once_the_host_it_left_lists_its_vm_in_a_later_heartbeat(tmp_path: Path) -> None:
    """A controller that first sees the run waiting after the VM came back (a new term, say):
    the entry is not rewritten, the host's heartbeats say where the VM is."""
    f = Fleet(tmp_path, canary=0)
    f.host("HV-A")
    f.place("web01", "HV-A")
    f.log.job([("web01", "HV-A")])
    f.step()
    f.step()
    f.fact(MovedFact(host="HV-A", job=1, run=1, epoch=1, reason="gone", time=f.log.tick()))
    assert dispatches(f.step()) == []
    listed = frozenset({"id-web01"})
    f.hosts["HV-A"] = HostView(host="HV-A", cluster=None, boot="b1", alive=True, seen=f.now, beats=1, vm_ids=listed)
    assert dispatches(f.step()) == []  # that beat's listing may be from before the VM left
    f.hosts["HV-A"] = HostView(host="HV-A", cluster=None, boot="b1", alive=True, seen=f.now, beats=2, vm_ids=frozenset())
    assert dispatches(f.step()) == []  # not listed
    f.hosts["HV-A"] = HostView(host="HV-A", cluster=None, boot="b1", alive=True, seen=f.now, beats=3, vm_ids=listed)
    assert dispatches(f.step()) == [(1, "HV-A", 2)]


def test_a_vm_placed_nowhere_is_skipped_after_the_placement_timeout(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    f.log.job([("vm1", "hv1")])
    assert f.step() == []
    f.now += 30.0
    actions = f.step()
    assert [(type(a).__name__, getattr(a, "code", None)) for a in actions] == [("SkipFact", "NotPlaced")]
    assert f.projection.journal.job(1).state is State.FAILED


def test_cancel_reaches_the_host_of_a_dispatched_run(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    f.place("vm1", "hv1")
    f.place("vm2", "hv1")
    f.log.job([("vm1", "hv1"), ("vm2", "hv1")], max_concurrency=1)
    f.step()
    f.step()
    f.fact(whole_run("hv1", 1, 1, 1)[0])
    f.fact(CancelFact(job=1, run=None, time=f.log.tick()))
    sends = f.step()
    assert [(s.host, s.work) for s in sends] == [("hv1", CancelWork(job=1, run=1, epoch=1))]
    assert [r.state for r in f.projection.journal.runs(1)] == [State.IN_PROGRESS, State.CANCELLED]


def test_a_new_term_sends_the_work_of_runs_not_started_again(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    f.place("vm1", "hv1")
    f.log.job([("vm1", "hv1")])
    f.step()
    first = f.step()[0].work
    f.planner = Planner(controller="c2", host_ttl=2.0)
    again = f.step()[0].work
    assert again.msg_id() == first.msg_id() and again.start == first.start


def test_lost_is_not_decided_twice_for_one_epoch(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1")
    f.place("vm1", "hv1")
    f.log.job([("vm1", "hv1")])
    f.step()
    f.step()
    f.host("hv1", alive=False)
    f.step()
    assert f.step() == []
    assert f.runs()[0].waiting == "lost"
    assert f.projection.journal.counter("fenced") == 0
    assert LostFact(job=1, run=1, epoch=1, reason="x", time=0).msg_id() == "lost-1-1-1"


def entry(key: str, rev: int, **body: Any) -> KvEntry:
    return KvEntry(key=key, value=json.dumps(body).encode(), revision=rev)


def test_host_watch_judges_liveness_by_revisions_on_its_own_clock() -> None:
    w = HostWatch(host_ttl=2.0)
    views = w.update({"hv1": entry("hv1", 1, host="hv1", boot="b", seq=1)}, now=0.0)
    assert views["hv1"].alive
    assert not w.update({"hv1": entry("hv1", 1, host="hv1", boot="b", seq=1)}, now=2.0)["hv1"].alive
    assert w.update({"hv1": entry("hv1", 2, host="hv1", boot="b", seq=2)}, now=2.5)["hv1"].alive
    # An entry that names another host, or is not JSON, is not a host.
    assert "hv2" not in w.update({"hv2": entry("hv2", 1, host="hv1", boot="b")}, now=3.0)


def test_each_hosts_work_is_written_in_the_newest_protocol_its_agent_reads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = HostWatch(host_ttl=2.0)
    views = w.update({
        "old": entry("old", 1, host="old", boot="b"),  # an agent from before protocol 2 says none
        "same": entry("same", 1, host="same", boot="b", protocol=VERSION),
        "newer": entry("newer", 1, host="newer", boot="b", protocol=VERSION + 3),
        "bad": entry("bad", 1, host="bad", boot="b", protocol="2"),
    }, now=0.0)  # fmt: skip
    assert {h: v.protocol for h, v in views.items()} == {"old": 1, "same": VERSION, "newer": VERSION + 3, "bad": 0}
    assert [work_protocol(views[h]) for h in ("old", "same", "newer")] == [1, VERSION, VERSION]
    # A host that reads nothing this controller writes is given no work: it counts as dead, said once.
    assert [h for h, v in views.items() if not v.alive] == ["bad"]
    assert [r.getMessage() for r in caplog.records] == ["host's agent is too old for this controller"]
    assert views["bad"].beats == 1
    for rev in (1, 2, 3):  # its beats
        w.update({**{h: entry(h, 1, host=h, boot="b") for h in ("old", "same", "newer")},
                  "bad": entry("bad", rev, host="bad", boot="b", protocol="2")}, now=0.5)  # fmt: skip
    assert len(caplog.records) == 1
    # Once this build writes protocol 2 at the oldest, an agent of protocol 1 is such a host.
    monkeypatch.setattr(planner_module, "OLDEST", 2)
    assert not HostWatch(host_ttl=2.0).update({"old": entry("old", 1, host="old", boot="b")}, now=0.0)["old"].alive


def test_lease_is_taken_when_free_renewed_and_taken_over_when_it_stops_moving() -> None:
    a = Lease("a", "http://a", ttl=3.0)
    b = Lease("b", "http://b", ttl=3.0)
    w = a.observe(None, 0.0)
    assert w is not None and w.last is None and w.term == 1
    assert a.written(w, 1, 0.0) and a.active(0.0)
    assert b.observe(entry("controller", 1, id="a", url="http://a", term=1), 0.0) is None
    assert a.observe(entry("controller", 1, id="a", url="http://a", term=1), 0.5) is None
    renew = a.observe(entry("controller", 1, id="a", url="http://a", term=1), 1.0)
    assert renew is not None and renew.last == 1 and renew.term == 1
    assert a.written(renew, 2, 1.0)
    assert b.observe(entry("controller", 2, id="a", url="http://a", term=1), 1.5) is None
    # a dies: the revision stays 2; b takes over after ttl on its own clock, with a new term.
    assert b.observe(entry("controller", 2, id="a", url="http://a", term=1), 4.0) is None
    take = b.observe(entry("controller", 2, id="a", url="http://a", term=1), 4.5)
    assert take is not None and take.last == 2 and take.term == 2
    assert b.written(take, 3, 4.5) and b.active(4.5)
    # a comes back: it is not the holder, and stops deciding.
    assert a.observe(entry("controller", 3, id="b", url="http://b", term=2), 5.0) is None
    assert not a.active(5.0)
    assert not a.written(take, None, 5.0)


def test_a_new_term_knows_the_boot_a_standby_saw_and_loses_runs_of_a_restarted_agent(tmp_path: Path) -> None:
    f = Fleet(tmp_path, canary=0)
    f.host("hv1", boot="b1")
    f.place("vm1", "hv1")
    f.log.job([("vm1", "hv1")])
    f.step()
    f.step()
    # A standby watching: it notes the boot the run was dispatched under.
    boots: dict[int, tuple[str, str]] = {}
    note_boots(boots, f.projection.journal.active_jobs(), f.hosts)
    assert boots == {1: ("hv1", "b1")}
    # The agent restarts, then the standby takes over: its planner sees the change.
    f.host("hv1", boot="b2")
    f.planner = Planner(controller="c2", host_ttl=2.0, boots=boots)
    assert [type(a).__name__ for a in f.step()] == ["LostFact"]
