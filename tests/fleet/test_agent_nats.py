"""A fleet agent (the FleetAgent on the in-process simulator, its own engine and journal) against a
real nats-server, with the test acting as the controller: it creates the host's work consumer,
puts bundles in the object store, publishes work and reads the host's facts from the log."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trio
from tests.builders import VM, bundle_doc, lab_doc, write_bundle_source, write_lab
from tests.engine.bundles import signed_bundle, trust_and_credential
from tests.engine.conftest import credential_for
from tests.fleet.conftest import CONTROLLER, PASSWORDS
from tests.simhost import open_sim_host

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.engine import EngineOptions, Journal, open_engine
from vmbusops.engine.changes import RunChange, StepChange
from vmbusops.engine.changes_json import change_from_json
from vmbusops.engine.states import State
from vmbusops.fleet import messages, names
from vmbusops.fleet.agent import FleetAgent, FleetAgentOptions
from vmbusops.fleet.agent_store import FleetStore
from vmbusops.fleet.nats_broker import NatsBroker, open_broker
from vmbusops.fleet.natsserver import NatsServer
from vmbusops.guestops.host import HyperVHost
from vmbusops.sim import default_state_dir
from vmbusops.sim.cluster import fail_host, migrate_vm
from vmbusops.sim.lab import load_lab
from vmbusops.sim.state import HostStore

HOST = "HV-A"
SAY = {"kind": "script", "name": "say", "inline": '1..5 | ForEach-Object { Write-Output "line $_" }'}
SECOND = {"kind": "script", "name": "second", "inline": 'Write-Output "done"'}
MARK = {"kind": "script", "name": "mark", "inline": "Set-Content -Path C:\\fleet-marker.txt -Value 5"}
SLOW = {"kind": "script", "name": "slow", "inline": 'Write-Output "started"; Start-Sleep -Seconds 60'}


@dataclass
class Fleet:
    """The test's controller side and the agent under test."""

    controller: NatsBroker
    agent: FleetAgent
    journal: Journal
    host: HyperVHost
    tmp: Path
    key: PrivateKey
    after: int = 0
    facts: list[messages.LogFact] | None = None
    #: The fleet protocol of each host message read (``v``).
    versions: set[int] | None = None

    async def put(self, path: Path) -> str:
        data = await trio.Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        await self.controller.put_bundle(digest, data)
        return digest

    async def vm_id(self, vm: str) -> str:
        return next(v.id.lower() for v in await self.host.list_vms() if v.name == vm)

    async def dispatch(self, job: int, run: int, vm: str, digest: str, *, epoch: int = 1, steps: int = 1,
                       msg_id: str | None = None, version: int = messages.VERSION) -> messages.DispatchWork:  # fmt: skip
        work = messages.DispatchWork(
            job=job, run=run, vm=vm, vm_id=await self.vm_id(vm), epoch=epoch, bundle=digest,
            start=messages.RunStartWire(step_states=("pending",) * steps, attempts=(0,) * steps, next_seq=1),
            controller="test", time=0.0,
        )  # fmt: skip
        data = messages.encode(work, version)
        await self.controller.publish(names.work_subject(HOST), data, msg_id=msg_id or work.msg_id())
        return work

    async def cancel(self, job: int, run: int, epoch: int = 1) -> None:
        work = messages.CancelWork(job=job, run=run, epoch=epoch)
        await self.controller.publish(names.work_subject(HOST), messages.encode(work), msg_id=work.msg_id())

    async def read_until(self, done: Callable[[list[messages.LogFact]], bool]) -> list[messages.LogFact]:
        """The host's facts so far, read until ``done`` says enough (the test fails after 30 s)."""
        facts = self.facts = self.facts or []
        versions = self.versions = self.versions or set()
        with trio.fail_after(30):
            while not done(facts):
                for m in await self.controller.read_log(after=self.after, batch=100, timeout=1.0):
                    self.after = m.seq
                    if m.subject == names.host_log_subject(HOST):
                        fact = messages.parse_host(m.data, host=HOST)
                        versions.add(json.loads(m.data)["v"])
                        # Batches published together are the same batches, one after another.
                        facts += fact.batches if isinstance(fact, messages.BatchesFact) else [fact]
        return facts


async def until(check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait until ``check`` holds (the test fails after 30 s)."""
    with trio.fail_after(30):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(0.05)


def batches(facts: list[messages.LogFact], job: int, run: int = 1) -> list[messages.BatchFact]:
    return [f for f in facts if isinstance(f, messages.BatchFact) and (f.job, f.run) == (job, run)]


def ended(job: int, run: int = 1) -> Callable[[list[messages.LogFact]], bool]:
    def done(facts: list[messages.LogFact]) -> bool:
        return any(
            c["t"] == "run" and State(c.get("state", "pending")).terminal
            for b in batches(facts, job, run) for c in b.changes
        )  # fmt: skip

    return done


def local_jobs(journal: Journal) -> list[Any]:
    return list(journal.jobs())


def cluster_lab(tmp: Path) -> Path:
    """Hosts HV-A and HV-B, nodes of cluster CL1; the VMs start on HV-A."""
    doc = lab_doc([VM("web01", more={"host": HOST}), VM("web02", more={"host": HOST}), VM("web03", more={"host": HOST})])
    del doc["host"]["name"]
    doc["hosts"] = [{"name": HOST, "cluster": "CL1"}, {"name": "HV-B", "cluster": "CL1"}]
    path = tmp / "labs" / "cluster.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


@asynccontextmanager
async def fleet_of(
    nats: NatsServer, controller: NatsBroker, tmp: Path, *, lab: Path | None = None, vms: list[VM] | None = None,
    password: str | None = None, max_sessions: int = 32, **options: Any,
) -> AsyncIterator[Fleet]:
    key = PrivateKey.generate()
    trust_and_credential(key)
    lab = lab or write_lab(tmp / "labs", vms or [VM("web01"), VM("web02"), VM("web03")])
    await controller.ensure_work_consumer(HOST)
    journal = Journal(tmp / "journal.sqlite")
    store = FleetStore(tmp / "fleet.sqlite")
    async with (
        open_broker(
            nats.url, host=HOST, name="test-agent", reconnect_wait=0.1, request_timeout=2.0,
            user=HOST if password else None, password=password,
        ) as broker,
        open_sim_host(lab, identity=HOST if lab.name == "cluster.toml" else None) as host,
        open_engine(host, journal, credential_for=credential_for,
                    options=EngineOptions(heartbeat_interval=0.1, lease_poll_interval=0.05,
                                          max_sessions=max_sessions)) as engine,  # fmt: skip
        trio.open_nursery() as jobs,
    ):
        agent = FleetAgent(broker, engine, store, jobs, FleetAgentOptions(host=HOST, cluster="c1", **options))
        await jobs.start(agent.run)
        yield Fleet(controller=controller, agent=agent, journal=journal, host=host, tmp=tmp, key=key)
        jobs.cancel_scope.cancel()
    store.close()


def replay_changes(found: list[messages.BatchFact]) -> tuple[State | None, list[State]]:
    """The run's and its steps' states after applying every forwarded change in order."""
    run: State | None = None
    steps: dict[int, State] = {}
    for b in found:
        for c in b.changes:
            change = change_from_json(c, run_id=1)
            if isinstance(change, RunChange) and change.state is not None:
                run = change.state
            elif isinstance(change, StepChange):
                steps[change.index] = change.state
    return run, [steps[i] for i in sorted(steps)]


async def test_a_dispatched_run_is_forwarded_as_its_local_journal_holds_it_and_runs_once(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    async with fleet_of(nats_server, broker, tmp_path) as fleet:
        archive = signed_bundle(tmp_path, fleet.key, vms=["web01", "web02"], steps=[SAY, SECOND])
        digest = await fleet.put(archive)
        await fleet.dispatch(7, 1, "web01", digest, steps=2)
        facts = await fleet.read_until(ended(7))
        found = batches(facts, 7)
        assert [b.n for b in found] == list(range(1, len(found) + 1))
        assert {(b.host, b.epoch) for b in found} == {(HOST, 1)}
        [job] = local_jobs(fleet.journal)
        assert job.source.startswith("fleet:")
        stored = fleet.journal.stored_records(job.id)
        forwarded = [list(r) for b in found for r in b.records]
        assert forwarded == [[r[3], r[4], r[5], r[6], r[7], r[8]] for r in stored]
        said = [json.loads(r[5])["value"] for r in forwarded if r[3] == "output"]
        assert said == ["line 1", "line 2", "line 3", "line 4", "line 5", "done"]
        [run] = fleet.journal.runs(job.id)
        assert replay_changes(found) == (run.state, [s.state for s in fleet.journal.steps(run.id)])
        assert run.state is State.SUCCESS

        # The same dispatch again (a controller's re-publish, a redelivery): nothing runs twice.
        await fleet.dispatch(7, 1, "web01", digest, steps=2, msg_id="dispatch-7-1-1-again")
        # A second run of the same fleet job may use the same bundle.
        await fleet.dispatch(7, 2, "web02", digest, steps=2)
        await fleet.read_until(ended(7, 2))
        assert fleet.agent.duplicates == 1
        assert len(local_jobs(fleet.journal)) == 2
        assert fleet.agent.taker.bundles.verified == 1  # verified (and extracted) once for both runs

        # The same job's next run names an archive whose signature was altered: another digest,
        # verified afresh, refused; nothing runs.
        good = archive.read_bytes()
        at = good.index(b'"sig": "') + 10
        tampered = tmp_path / "tampered.vmb"
        tampered.write_bytes(good[:at] + bytes([good[at] ^ 1]) + good[at + 1 :])
        await fleet.dispatch(7, 3, "web02", await fleet.put(tampered), steps=2)
        facts = await fleet.read_until(lambda fs: any(isinstance(f, messages.RefusedFact) for f in fs))
        [refused] = [f for f in facts if isinstance(f, messages.RefusedFact)]
        assert (refused.job, refused.run, refused.code) == (7, 3, "BundleRejected")
        assert len(local_jobs(fleet.journal)) == 2


async def test_a_bundle_this_host_does_not_trust_or_used_by_another_job_is_refused_and_nothing_runs(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    async with fleet_of(nats_server, broker, tmp_path) as fleet:
        stranger = PrivateKey.generate()
        untrusted = await fleet.put(signed_bundle(tmp_path, stranger, vms=["web01"], steps=[MARK]))
        await fleet.dispatch(3, 1, "web01", untrusted)
        facts = await fleet.read_until(lambda fs: any(isinstance(f, messages.RefusedFact) for f in fs))
        [refused] = [f for f in facts if isinstance(f, messages.RefusedFact)]
        assert (refused.job, refused.code) == (3, "BundleRejected")
        assert local_jobs(fleet.journal) == []
        marker = default_state_dir() / "guests" / "web01" / "C" / "fleet-marker.txt"
        assert not marker.exists()  # nothing reached the guest

        # Out of the bundle's targets: refused as well.
        trusted = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[SAY]))
        await fleet.dispatch(4, 1, "web02", trusted)
        await fleet.read_until(lambda fs: sum(isinstance(f, messages.RefusedFact) for f in fs) == 2)
        assert "does not target VM 'web02'" in [f for f in fleet.facts or [] if isinstance(f, messages.RefusedFact)][-1].reason

        # One fleet job's bundle, given to a second fleet job: a replay.
        trusted = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[MARK]))
        await fleet.dispatch(5, 1, "web01", trusted)
        await fleet.read_until(ended(5))
        assert marker.read_text(encoding="utf-8-sig").strip() == "5"  # the guest check sees a run
        marker.unlink()
        await fleet.dispatch(6, 1, "web01", trusted)
        facts = await fleet.read_until(lambda fs: sum(isinstance(f, messages.RefusedFact) for f in fs) == 3)
        replayed = [f for f in facts if isinstance(f, messages.RefusedFact)][-1]
        assert (replayed.job, replayed.code) == (6, "ReplayedBundle")
        assert "already served fleet job 5" in replayed.reason
        assert len(local_jobs(fleet.journal)) == 1
        assert not marker.exists()

        # A start that does not fit the bundle's steps (a controller's bug): refused, not guessed.
        other = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[MARK]))
        await fleet.dispatch(8, 1, "web01", other, steps=3)
        facts = await fleet.read_until(lambda fs: sum(isinstance(f, messages.RefusedFact) for f in fs) == 4)
        misfit = [f for f in facts if isinstance(f, messages.RefusedFact)][-1]
        assert (misfit.job, misfit.code) == (8, "InternalError") and "does not fit" in misfit.reason
        assert len(local_jobs(fleet.journal)) == 1 and not marker.exists()


@pytest.mark.parametrize("version", range(messages.OLDEST, messages.VERSION + 1))
async def test_a_runs_facts_are_written_in_the_protocol_of_the_work_that_dispatched_it(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path, version: int
) -> None:
    """A fleet upgraded host by host: an older controller dispatched the run, so it must be able
    to read every fact of it. One session for two runs, so that one waits for it: what only
    protocol 2 carries. Each fact goes in the oldest protocol that carries it."""
    hold = {"kind": "script", "name": "hold", "inline": 'Start-Sleep -Milliseconds 1500; Write-Output "held"'}
    async with fleet_of(nats_server, broker, tmp_path, max_sessions=1) as fleet:
        digest = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01", "web02"], steps=[hold]))
        await fleet.dispatch(8, 1, "web01", digest, version=version)
        await fleet.dispatch(8, 2, "web02", digest, version=version)
        # parse_host refuses a protocol-1 message that says what a run waits for.
        facts = await fleet.read_until(lambda fs: ended(8, 1)(fs) and ended(8, 2)(fs))
        assert fleet.versions == set(range(1, version + 1))
        waited = [c["waiting"] for run in (1, 2) for b in batches(facts, 8, run) for c in b.changes if "waiting" in c]
        assert waited == (["session"] if version >= 2 else [])  # the second run waited for the first
        assert {replay_changes(batches(facts, 8, run))[0] for run in (1, 2)} == {State.SUCCESS}


async def test_cancel_work_cancels_the_local_run(nats_server: NatsServer, broker: NatsBroker, tmp_path: Path) -> None:
    async with fleet_of(nats_server, broker, tmp_path) as fleet:
        digest = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01", "web02"], steps=[SLOW]))
        await fleet.dispatch(9, 1, "web01", digest)
        await fleet.read_until(lambda fs: any(r[5].find("started") >= 0 for b in batches(fs, 9) for r in b.records))
        await fleet.cancel(9, 1)
        facts = await fleet.read_until(ended(9))
        assert replay_changes(batches(facts, 9))[0] is State.CANCELLED
        # A cancel right behind its dispatch, before the local job exists, is not lost.
        await fleet.dispatch(9, 2, "web02", digest)
        await fleet.cancel(9, 2)
        facts = await fleet.read_until(ended(9, 2))
        assert replay_changes(batches(facts, 9, 2))[0] is State.CANCELLED


async def test_host_entry_and_placement_are_kept_with_compare_and_set(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    async with fleet_of(nats_server, broker, tmp_path, heartbeat=0.1) as fleet:
        async def beats(n: int) -> bool:
            entry = await broker.kv_get(names.HOSTS_BUCKET, HOST)
            return entry is not None and json.loads(entry.value)["seq"] >= n

        await until(lambda: beats(3))
        entry = await broker.kv_get(names.HOSTS_BUCKET, HOST)
        assert entry is not None
        doc = json.loads(entry.value)
        assert (doc["host"], doc["cluster"], doc["boot"]) == (HOST, "c1", fleet.agent.boot)
        assert doc["protocol"] == messages.VERSION  # the controller writes this host's work in it
        assert sorted(v["vm"] for v in doc["vms"]) == ["web01", "web02", "web03"]
        vm_id = await fleet.vm_id("web02")
        placed = await broker.kv_get(names.PLACEMENT_BUCKET, vm_id)
        assert placed is not None
        assert json.loads(placed.value) == {
            "vm": "web02", "vm_id": vm_id, "host": HOST, "cluster": "c1", "state": "Running", "boot": fleet.agent.boot,
        }  # fmt: skip
        # Unchanged: never written again, whatever the beats.
        writes = fleet.agent.placement.writes
        beat = fleet.agent.seq
        await until(lambda: fleet.agent.seq >= beat + 5)
        assert fleet.agent.placement.writes == writes
        assert (await broker.kv_get(names.PLACEMENT_BUCKET, vm_id)).revision == placed.revision  # type: ignore[union-attr]
        # Another host claims the VM (a migration seen there first): this host lists it, so it is
        # here, and the entry is taken back, on the revision read (compare-and-set).
        other = json.dumps({"vm": "web02", "vm_id": vm_id, "host": "HV-B", "cluster": "c1", "state": "Off", "boot": "b"})
        await broker.kv_put(names.PLACEMENT_BUCKET, vm_id, other.encode())
        fleet.agent.placement.known.pop(vm_id)  # as after a restart: nothing cached
        async def placed_here() -> bool:
            entry = await broker.kv_get(names.PLACEMENT_BUCKET, vm_id)
            return entry is not None and json.loads(entry.value)["host"] == HOST

        await until(placed_here)


async def test_a_host_that_loses_the_broker_stops_its_runs_and_hands_them_back_once_back(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    async with fleet_of(nats_server, broker, tmp_path, heartbeat=0.1, host_ttl=1.0) as fleet:
        digest = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[SLOW]))
        await fleet.dispatch(11, 1, "web01", digest)
        await fleet.read_until(lambda fs: any("started" in r[5] for b in batches(fs, 11) for r in b.records))
        await trio.to_thread.run_sync(nats_server.kill)
        await until(lambda: fleet.agent.lost)
        [job] = local_jobs(fleet.journal)
        await until(lambda: fleet.journal.runs(job.id)[0].state is State.CANCELLED)
        await trio.to_thread.run_sync(nats_server.start)
        await until(lambda: not fleet.agent.lost)
        # The run's last batches (epoch 1) were kept and published once back, without the local
        # cancel as the run's end, then a moved fact: the controller is to dispatch it again.
        facts = await fleet.read_until(lambda fs: any(isinstance(f, messages.MovedFact) for f in fs))
        [moved] = [f for f in facts if isinstance(f, messages.MovedFact)]
        assert (moved.job, moved.run, moved.epoch, moved.host) == (11, 1, 1, HOST)
        assert "lost the broker" in moved.reason
        assert not ended(11)(facts)
        assert replay_changes(batches(facts, 11))[0] is State.IN_PROGRESS
        assert facts.index(moved) == len(facts) - 1  # after the last batch of the run


async def test_a_run_whose_vm_migrates_away_is_reported_moved_not_failed(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    lab = cluster_lab(tmp_path)
    async with fleet_of(nats_server, broker, tmp_path, lab=lab) as fleet:
        digest = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[SAY, SLOW]))
        await fleet.dispatch(12, 1, "web01", digest, steps=2)
        await fleet.read_until(lambda fs: any("started" in r[5] for b in batches(fs, 12) for r in b.records))
        migrate_vm(HostStore(load_lab(lab), default_state_dir()), "web01", "HV-B")
        facts = await fleet.read_until(lambda fs: any(isinstance(f, messages.MovedFact) for f in fs))
        [moved] = [f for f in facts if isinstance(f, messages.MovedFact)]
        assert (moved.job, moved.run, moved.epoch, moved.host) == (12, 1, 1, HOST)
        assert "web01" in moved.reason
        # Listed again before the fact: the beats that follow it no longer claim the VM.
        assert "web01" not in [vm.name for vm in fleet.agent.vms]
        # Locally the run failed; the fleet run stands as its batches said: the first step done,
        # the second one as it was when the VM left (resumed by its rules where it is now).
        [job] = local_jobs(fleet.journal)
        assert fleet.journal.runs(job.id)[0].state is State.FAILED
        run_state, step_states = replay_changes(batches(facts, 12))
        assert run_state is State.IN_PROGRESS
        assert step_states == [State.SUCCESS, State.IN_PROGRESS]
        assert facts.index(moved) == len(facts) - 1  # after the last batch of the run


async def test_an_agent_does_everything_it_must_as_its_own_restricted_nats_user(
    fleet_server: NatsServer, tmp_path: Path
) -> None:
    async with open_broker(
        fleet_server.url, user=CONTROLLER, password=PASSWORDS[CONTROLLER], name="test-controller", reconnect_wait=0.1
    ) as controller:
        await controller.ensure_fleet()
        async with fleet_of(fleet_server, controller, tmp_path, password=PASSWORDS[HOST], heartbeat=0.1,
                            max_inline_records=0) as fleet:  # fmt: skip
            digest = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[SAY, SECOND]))
            await fleet.dispatch(13, 1, "web01", digest, steps=2)
            facts = await fleet.read_until(ended(13))
            # Every record was held back (no memory for any) and read back from the journal.
            [job] = local_jobs(fleet.journal)
            forwarded = [list(r) for b in batches(facts, 13) for r in b.records]
            assert forwarded == [[r[3], r[4], r[5], r[6], r[7], r[8]] for r in fleet.journal.stored_records(job.id)]
            assert len(forwarded) == 7
            assert await controller.kv_get(names.PLACEMENT_BUCKET, await fleet.vm_id("web01")) is not None
            assert await controller.kv_get(names.HOSTS_BUCKET, HOST) is not None


async def test_a_run_on_a_failed_node_is_moved_once_placement_shows_its_vm_elsewhere(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    lab = cluster_lab(tmp_path)
    async with fleet_of(nats_server, broker, tmp_path, lab=lab, heartbeat=0.1, host_ttl=5.0, retry_max=0.1) as fleet:
        digest = await fleet.put(signed_bundle(tmp_path, fleet.key, vms=["web01"], steps=[SAY, SLOW]))
        vm_id = await fleet.vm_id("web01")
        await fleet.dispatch(14, 1, "web01", digest, steps=2)
        await fleet.read_until(lambda fs: any("started" in r[5] for b in batches(fs, 14) for r in b.records))
        fleet.agent.placement.known.clear()
        fail_host(HostStore(load_lab(lab), default_state_dir()), HOST)
        # HV-B's agent, which has the VM now, says so in placement.
        entry = {"vm": "web01", "vm_id": vm_id, "host": "HV-B", "cluster": "CL1", "state": "Running", "boot": "b"}
        await broker.kv_put(names.PLACEMENT_BUCKET, vm_id, json.dumps(entry).encode())
        facts = await fleet.read_until(lambda fs: any(isinstance(f, messages.MovedFact) for f in fs))
        assert replay_changes(batches(facts, 14)) == (State.IN_PROGRESS, [State.SUCCESS, State.IN_PROGRESS])


async def test_a_bundle_by_tag_serves_only_the_vms_its_tags_select_on_this_host(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    vms = [VM("web01", more={"notes": "tags: web"}), VM("web02", more={"notes": "tags: db"})]
    async with fleet_of(nats_server, broker, tmp_path, vms=vms) as fleet:
        doc = bundle_doc([], [SAY], name="by-tag")
        doc["targets"] = {"tags": ["web"]}
        source = write_bundle_source(tmp_path / "by-tag", doc)
        build_bundle(source, tmp_path / "by-tag.vmb")
        sign_bundle(tmp_path / "by-tag.vmb", fleet.key)
        digest = await fleet.put(tmp_path / "by-tag.vmb")
        await fleet.dispatch(20, 1, "web01", digest)
        await fleet.read_until(ended(20))
        await fleet.dispatch(20, 2, "web02", digest)
        facts = await fleet.read_until(lambda fs: any(isinstance(f, messages.RefusedFact) for f in fs))
        [refused] = [f for f in facts if isinstance(f, messages.RefusedFact)]
        assert (refused.run, refused.code) == (2, "BundleRejected") and "does not select VM 'web02'" in refused.reason
        assert len(local_jobs(fleet.journal)) == 1


async def test_a_host_slow_to_list_its_vms_still_beats_with_the_last_listing(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    async with fleet_of(nats_server, broker, tmp_path, heartbeat=0.1, host_ttl=1.0) as fleet:
        await until(lambda: len(fleet.agent.vms) == 3)
        host = fleet.agent.engine.host
        release = trio.Event()
        stalled = trio.Event()
        listing = host.list_vms

        async def stuck(names: Any = None, **how: Any) -> Any:  # Get-VM that does not answer until released
            stalled.set()
            await release.wait()
            return await listing(names, **how)

        host.list_vms = stuck  # type: ignore[method-assign]
        await stalled.wait()
        beat = fleet.agent.seq
        await until(lambda: fleet.agent.seq >= beat + 5)  # beats go on while Get-VM hangs
        entry = await broker.kv_get(names.HOSTS_BUCKET, HOST)
        assert entry is not None and json.loads(entry.value)["seq"] > beat
        assert sorted(v["vm"] for v in json.loads(entry.value)["vms"]) == ["web01", "web02", "web03"]
        assert not fleet.agent.lost
        release.set()
