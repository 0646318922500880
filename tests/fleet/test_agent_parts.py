"""The fleet agent's parts that need no broker: its store, batches from commits, the moved rule,
joining options."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from vmbusops.config import load_config
from vmbusops.engine.changes import JobChange, RunChange, StepChange
from vmbusops.engine.changes_json import change_from_json
from vmbusops.engine.journal import StoredRecord
from vmbusops.engine.states import State
from vmbusops.errors import ConfigError
from vmbusops.fleet.agent_batches import BatchBuilder, FleetRunKey, Tracked, moved_split, wire_changes
from vmbusops.fleet.agent_bundles import Refusal, fetch_bundle, read_cached
from vmbusops.fleet.agent_config import ENV_NATS_PASSWORD, FleetConfig, check_url, fleet_join
from vmbusops.fleet.agent_store import DONE, RUNNING, STALE, FleetStore
from vmbusops.owner import Owner, current_owner


def test_store_takes_a_dispatch_once_and_knows_what_an_earlier_process_left(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.sqlite")
    me = current_owner()
    other = Owner(pid=me.pid + 100000, started="earlier")
    assert store.take(7, 1, 1, "web01", me)
    assert not store.take(7, 1, 1, "web01", me)  # a redelivery
    assert store.take(7, 1, 2, "web01", me)
    assert store.latest_epoch(7, 1) == 2
    store.set_state(7, 1, 1, RUNNING, local_job=12)
    assert store.is_fleet_job(12)
    assert store.take(8, 1, 1, "db01", other)
    store.set_state(8, 1, 1, RUNNING, local_job=13)
    left = store.left_by_others(me)
    assert [(r.job, r.local_job, r.state) for r in left] == [(8, 13, RUNNING)]
    store.set_state(8, 1, 1, STALE)
    assert store.left_by_others(me) == []
    store.forget(7, 1, 2)  # never got a local job: may be taken again
    assert store.get(7, 1, 2) is None
    store.forget(7, 1, 1)  # has one: kept
    assert store.get(7, 1, 1) is not None
    store.close()
    reopened = FleetStore(tmp_path / "fleet.sqlite")
    assert reopened.get(7, 1, 1) is not None  # durable
    reopened.close()


def test_a_bundle_serves_one_fleet_job(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.sqlite")
    assert store.bind_bundle("b1", 3) == 3
    assert store.bind_bundle("b1", 3) == 3
    assert store.bind_bundle("b1", 4) == 3  # a second job finds the first
    store.unbind_bundle("b1", 4)  # only the job it is bound to may unbind it
    assert store.bundle_job("b1") == 3
    store.close()


def _rec(job: int, n: int, run: int, seq: int, text: str = "x") -> StoredRecord:
    return (job, n, run, seq, "s1", 1, "output", 100.0 + n, f'{{"v":"{text}"}}')


def _tracked(job: int = 5, local_job: int = 40, local_run: int = 90) -> Tracked:
    return Tracked(key=FleetRunKey(job, 1, 2), vm="web01", vm_id="abc", local_job=local_job, local_run=local_run)


def test_one_batch_per_fleet_run_per_commit_numbered_per_epoch_and_only_fleet_runs() -> None:
    builder = BatchBuilder()
    a, b = _tracked(5, 40, 90), _tracked(6, 41, 91)
    builder.track(a)
    builder.track(b)
    changes = [
        StepChange(run_id=90, index=0, state=State.IN_PROGRESS, attempts=1, started_at=1.0),
        RunChange(run_id=99, state=State.IN_PROGRESS, current_step="s1", records=0),  # a local job's
        JobChange(job_id=40, state=State.IN_PROGRESS, started_at=1.0),  # the projection's own
        RunChange(run_id=91, state=None, current_step="s1", records=1),
    ]
    stored = [_rec(40, 1, 90, 3), _rec(77, 1, 99, 1), _rec(40, 2, 90, 4), _rec(41, 1, 91, 1)]
    assert builder.applied(stored, changes, now=5.0) == 2
    first, second = builder.queue
    assert (first.tracked, first.n, second.tracked, second.n) == (a, 1, b, 1)
    assert first.records == [(3, "s1", 1, "output", 101.0, '{"v":"x"}'), (4, "s1", 1, "output", 102.0, '{"v":"x"}')]
    assert first.changes == [changes[0]]
    assert second.changes == [changes[3]]
    # The wire form parses back to the same change for the controller's run id.
    assert [change_from_json(c, run_id=90) for c in wire_changes(first.changes)] == [changes[0]]
    builder.applied([_rec(40, 3, 90, 5)], [], now=6.0)
    assert builder.queue[-1].n == 2
    assert builder.applied([_rec(77, 2, 99, 2)], [], now=7.0) == 0


def test_over_the_memory_bound_records_are_left_in_the_journal_and_numbered_by_range() -> None:
    builder = BatchBuilder(max_inline_records=2)
    builder.track(_tracked())
    builder.applied([_rec(40, 1, 90, 1), _rec(40, 2, 90, 2)], [], now=1.0)
    assert builder.inline_records == 2
    builder.applied([_rec(40, 3, 90, 3), _rec(40, 4, 90, 4), _rec(40, 5, 90, 5)], [], now=2.0)
    held, spilled = builder.queue
    assert held.records is not None and len(held.records) == 2
    assert spilled.records is None and spilled.spilled == (2, 5) and spilled.count == 3
    builder.sent(held)
    builder.sent(spilled)
    assert builder.inline_records == 0 and not builder.queue


def test_what_was_queued_goes_in_one_message_within_bounds_and_a_batch_that_may_move_goes_alone() -> None:
    builder = BatchBuilder(max_inline_records=6)
    a, b = _tracked(5, 40, 90), _tracked(6, 41, 91)
    builder.track(a)
    builder.track(b)
    for k in range(3):  # three commits, each a record of both runs
        builder.applied([_rec(40, k + 1, 90, k + 1), _rec(41, k + 1, 91, k + 1)], [], now=1.0)
    failed = RunChange(run_id=90, state=State.FAILED, current_step=None, records=3, error="gone", code="X")
    builder.applied([], [failed], now=2.0)
    builder.applied([_rec(41, 4, 91, 4), _rec(41, 5, 91, 5)], [], now=3.0)  # past the bound: spilled
    builder.applied([_rec(41, 6, 91, 6)], [], now=4.0)
    queue = list(builder.queue)
    assert builder.next_group(256, 1 << 20) == queue[:6]
    assert builder.next_group(4, 1 << 20) == queue[:4]
    assert builder.next_group(256, 1) == queue[:1]  # one batch goes even over the size
    for pending in queue[:6]:
        builder.sent(pending)
    assert builder.next_group(256, 1 << 20) == [queue[6]]  # may end in a move: alone
    builder.sent(queue[6])
    assert builder.next_group(256, 1 << 20) == [queue[7]]  # to be read back: alone
    builder.sent(queue[7])
    assert builder.next_group(256, 1 << 20) == [queue[8]]


def test_a_queue_is_due_at_once_only_when_a_batch_in_it_ends_its_run_or_it_fills_a_message() -> None:
    builder = BatchBuilder()
    a = _tracked(5, 40, 90)
    builder.track(a)
    builder.applied([_rec(40, 1, 90, 1)], [StepChange(run_id=90, index=0, state=State.IN_PROGRESS, attempts=1)], 1.0)
    builder.applied([_rec(40, 2, 90, 2)], [], now=2.0)
    assert not builder.due(256)  # records and a step's start wait for the writer's next tick
    assert builder.due(2)  # a message's worth
    ended = RunChange(run_id=90, state=State.SUCCESS, current_step=None, records=2)
    builder.applied([], [ended], now=3.0)
    assert builder.due(256) and builder.ending == 1
    for pending in list(builder.queue):
        builder.sent(pending)
    assert not builder.due(1) and builder.ending == 0


def test_the_store_records_runs_that_ended_in_one_write(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.sqlite")
    me = current_owner()
    for run in (1, 2, 3):
        store.take(7, run, 1, f"vm{run}", me)
        store.set_state(7, run, 1, RUNNING, local_job=10 + run)
    store.done([(7, 1, 1, 4), (7, 3, 1, 9)])
    rows = {r: store.get(7, r, 1) for r in (1, 2, 3)}
    assert {r: (row.state, row.last_n) for r, row in rows.items() if row} == {
        1: (DONE, 4), 2: (RUNNING, 0), 3: (DONE, 9),
    }
    store.close()


def test_a_run_whose_vm_left_keeps_all_but_its_terminal_failure() -> None:
    kept_step = StepChange(run_id=1, index=0, state=State.SUCCESS, finished_at=2.0)
    failing = [
        kept_step,
        StepChange(run_id=1, index=1, state=State.FAILED, error="VM not found", code="VMNotFound"),
        StepChange(run_id=1, index=2, state=State.SKIPPED),
        RunChange(run_id=1, state=None, current_step="s2", records=4),
        RunChange(run_id=1, state=State.FAILED, current_step=None, records=4, error="gone", code="VMNotFound"),
    ]
    builder = BatchBuilder()
    builder.track(_tracked(local_run=1))
    builder.applied([], failing, now=1.0)
    assert builder.queue[0].ends_failed and builder.queue[0].ends
    assert moved_split(failing) == [kept_step, failing[3]]
    cancelled = RunChange(run_id=1, state=State.CANCELLED, current_step=None, records=4)
    builder.applied([], [cancelled], now=2.0)
    assert not builder.queue[-1].ends_failed  # a cancelled run is not moved


def test_joining_options_are_checked_and_the_password_never_comes_from_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    for bad in ("http://x:1", "nats://", "nats://h:99999", "127.0.0.1:4222"):
        with pytest.raises(ConfigError, match="bad --fleet URL"):
            check_url(bad)
    with pytest.raises(ConfigError, match="carries a password") as refused:
        check_url("nats://hv01:secret@h:4222")
    assert "--fleet-user" in str(refused.value.hint)
    with pytest.raises(ConfigError, match="carries a password") as refused:
        check_url("nats://hv01:secret@h:4222", ("--nats", "--nats-user", "--nats-password-file"))
    assert "--nats-user" in str(refused.value.hint) and "--fleet" not in str(refused.value.hint)
    # A bad URL is quoted, but never its password.
    for bad, shown in (("nats://hv01:secret@h:abc", "'nats://hv01:***@h:abc'"), ("hv01:secret@h:1", "'hv01:***@h:1'"),
                       ("nats://:secret@h:99999", "'nats://:***@h:99999'"), ("nats://hv01@h:abc", "'nats://hv01@h:abc'")):
        with pytest.raises(ConfigError, match="bad --fleet URL") as refused:
            check_url(bad)
        assert shown in refused.value.message and "secret" not in refused.value.message
    with pytest.raises(ConfigError, match="not valid"):
        fleet_join(FleetConfig(), url="nats://h:1", host="hv.01", default_host="sim")
    # With no name given, the host's is taken from --host: each Hyper-V host's own for `local`.
    monkeypatch.setattr(socket, "gethostname", lambda: "HV07.corp.example")
    for spec, name in (("sim:HV-A", "HV-A"), ("local", "HV07"), ("ssh://admin@hv02.corp.example:22", "hv02"),
                       ("winrm://10.0.0.5", "10-0-0-5"), ("sim", "sim"), ("lab-hosts", "lab-hosts")):
        assert fleet_join(FleetConfig(), url="nats://h:1", host=None, default_host=spec).host == name, spec
    assert fleet_join(FleetConfig(), url="nats://h:1", host="HV-Z", default_host="sim:HV-A").host == "HV-Z"
    with pytest.raises(ConfigError, match=r"would be 'a\.b' \(from --host a\.b\)") as refused:
        fleet_join(FleetConfig(), url="nats://h:1", host=None, default_host="a.b")
    assert "--fleet-host" in str(refused.value.hint)
    monkeypatch.setenv(ENV_NATS_PASSWORD, "from-env")
    join = fleet_join(FleetConfig(user="hv01"), url="nats://h:1", host=None, default_host="sim")
    assert (join.host, join.user, join.password) == ("sim", "hv01", "from-env")
    assert "from-env" not in repr(join)
    secret = tmp_path / "pass"
    secret.write_text("from-file\n")
    join = fleet_join(FleetConfig(user="hv01", password_file=str(secret)), url="tls://h:1", host="hv01",
                      default_host="sim", cluster="c1")  # fmt: skip
    assert (join.host, join.cluster, join.password) == ("hv01", "c1", "from-file")
    with pytest.raises(ConfigError, match="no fleet URL"):
        fleet_join(FleetConfig(), url=None, host=None, default_host="sim")
    (tmp_path / "config.toml").write_text(
        '[fleet]\nurl = "nats://127.0.0.1:4222"\nhost = "hv02"\ncluster = "c1"\nhost_ttl_seconds = 2\n'
        "list_seconds = 0.5\n"
    )
    config = load_config(tmp_path / "config.toml")
    with pytest.raises(ConfigError, match="password without a user"):
        fleet_join(config.fleet, url=None, host=None, default_host="sim")
    monkeypatch.delenv(ENV_NATS_PASSWORD)
    join = fleet_join(config.fleet, url=None, host=None, default_host="sim")
    assert (join.url, join.host, join.cluster, join.host_ttl) == ("nats://127.0.0.1:4222", "hv02", "c1", 2.0)
    assert join.list_every == 0.5
    (tmp_path / "config.toml").write_text('[fleet]\nheartbeat = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[fleet\]"):
        load_config(tmp_path / "config.toml")



async def test_a_bundle_is_taken_only_with_its_digest_from_the_cache_or_the_broker(tmp_path: Path) -> None:
    good = b"the archive"
    digest = hashlib.sha256(good).hexdigest()

    class Store:
        def __init__(self, data: bytes | None) -> None:
            self.data = data
            self.gets = 0

        async def get_bundle(self, digest: str) -> bytes | None:
            self.gets += 1
            return self.data

    cache = tmp_path / "cache"
    cache.mkdir()
    for data, what in ((None, "has no bundle"), (b"something else", "does not have that SHA-256")):
        with pytest.raises(Refusal, match=what):
            await fetch_bundle(Store(data), digest, cache=cache, max_bytes=1000)  # type: ignore[arg-type]
    with pytest.raises(Refusal, match="over this agent's limit"):
        await fetch_bundle(Store(good), digest, cache=cache, max_bytes=3)  # type: ignore[arg-type]
    store = Store(good)
    assert await fetch_bundle(store, digest, cache=cache, max_bytes=1000) == good  # type: ignore[arg-type]
    assert await fetch_bundle(store, digest, cache=cache, max_bytes=1000) == good  # type: ignore[arg-type]
    assert store.gets == 1  # the second came from the cache
    (cache / f"{digest}.vmb").write_bytes(b"tampered")
    assert read_cached(cache, digest) is None  # hashed again, and dropped
    assert not (cache / f"{digest}.vmb").exists()
    assert await fetch_bundle(store, digest, cache=cache, max_bytes=1000) == good  # type: ignore[arg-type]
    assert store.gets == 2
