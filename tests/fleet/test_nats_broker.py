"""NatsBroker against a real nats-server: the log, key-value CAS, work, bundles, restarts."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
import trio

from vmbusops.fleet import names
from vmbusops.fleet.broker import BrokerError, StreamMessage
from vmbusops.fleet.nats_broker import NatsBroker, open_broker
from vmbusops.fleet.natsserver import NatsServer


async def publish_ctl(broker: NatsBroker, first: int, last: int) -> None:
    for i in range(first, last + 1):
        await broker.publish(names.CTL_SUBJECT, b"fact %d" % i, msg_id=f"fact-{i}")


async def read_all(broker: NatsBroker, after: int, until: int, batch: int) -> list[StreamMessage]:
    out: list[StreamMessage] = []
    while after < until:
        got = await broker.read_log(after=after, batch=batch, timeout=10)
        assert got, f"nothing after {after} within 10 s"
        assert len(got) <= batch
        out += got
        after = got[-1].seq
    return out


async def test_a_second_publish_of_one_message_id_adds_nothing(broker: NatsBroker) -> None:
    first = await broker.publish(names.CTL_SUBJECT, b"job", msg_id="job-1")
    again = await broker.publish(names.CTL_SUBJECT, b"job", msg_id="job-1")
    other = await broker.publish(names.host_log_subject("HV-A"), b"batch", msg_id="batch-1")
    assert (first.stream, first.duplicate) == (names.LOG_STREAM, False)
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert (other.seq, other.duplicate) == (first.seq + 1, False)
    assert await broker.last_log_seq() == other.seq


async def test_the_log_reads_in_order_from_any_sequence(broker: NatsBroker) -> None:
    await publish_ctl(broker, 1, 25)
    got = await read_all(broker, 0, 25, batch=7)
    assert [m.seq for m in got] == list(range(1, 26))
    assert [m.data for m in got] == [b"fact %d" % i for i in range(1, 26)]
    assert {m.subject for m in got} == {names.CTL_SUBJECT}
    # nothing more: an empty answer once the timeout passes
    assert await broker.read_log(after=25, batch=5, timeout=0.2) == []
    # a reader asking from elsewhere (a standby catching up, a rewind) gets exactly that
    assert [m.seq for m in await broker.read_log(after=10, batch=3, timeout=5)] == [11, 12, 13]
    assert [m.seq for m in await broker.read_log(after=2, batch=2, timeout=5)] == [3, 4]
    # and what is published while a read waits arrives in that read
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_ctl, broker, 26, 26)
        late = await broker.read_log(after=25, batch=5, timeout=10)
    assert [m.seq for m in late] == [26]


async def test_the_log_survives_a_killed_and_restarted_server(
    nats_server: NatsServer, broker: NatsBroker
) -> None:
    await publish_ctl(broker, 1, 10)
    before = await read_all(broker, 0, 4, batch=4)
    await trio.to_thread.run_sync(lambda: nats_server.restart(hard=True))
    # publishes ride the reconnection (or fail as BrokerError, retried with the same id)
    for i in range(11, 16):
        while True:
            try:
                await broker.publish(names.CTL_SUBJECT, b"fact %d" % i, msg_id=f"fact-{i}")
                break
            except BrokerError:
                await trio.sleep(0.1)
    after: list[StreamMessage] = []
    last = before[-1].seq
    while last < 15:
        try:
            got = await broker.read_log(after=last, batch=3, timeout=5)
        except BrokerError:
            await trio.sleep(0.1)
            continue
        after += got
        if got:
            last = got[-1].seq
    seqs = [m.seq for m in before + after]
    assert seqs == list(range(1, 16)), "a gap or a repeat across the restart"
    assert [m.data for m in before + after] == [b"fact %d" % i for i in range(1, 16)]


async def test_reading_the_log_while_the_server_is_down_is_a_broker_error_not_an_empty_page(
    nats_server: NatsServer, broker: NatsBroker
) -> None:
    """An empty page says the reader is up to date (the controller's health says ready on it);
    with the server gone it is not, and must not look so."""
    await publish_ctl(broker, 1, 3)
    assert [m.seq for m in await read_all(broker, 0, 3, batch=3)] == [1, 2, 3]
    assert await broker.read_log(after=3, batch=3, timeout=0.2) == []  # up to date
    await trio.to_thread.run_sync(nats_server.stop)
    try:
        for _ in range(3):
            with pytest.raises(BrokerError):
                await broker.read_log(after=3, batch=3, timeout=0.5)
    finally:
        await trio.to_thread.run_sync(nats_server.start)
    with trio.fail_after(30):
        while True:
            try:
                assert await broker.read_log(after=3, batch=3, timeout=0.5) == []
                break
            except BrokerError:
                await trio.sleep(0.1)


async def test_key_value_compare_and_set(broker: NatsBroker) -> None:
    bucket = names.LEASES_BUCKET
    assert await broker.kv_get(bucket, "controller") is None
    rev = await broker.kv_create(bucket, "controller", b"ctl-1")
    assert rev is not None
    assert await broker.kv_create(bucket, "controller", b"ctl-2") is None
    rev2 = await broker.kv_update(bucket, "controller", b"ctl-1 again", last=rev)
    assert rev2 is not None and rev2 > rev
    # a standby that read the old revision loses
    assert await broker.kv_update(bucket, "controller", b"ctl-2", last=rev) is None
    entry = await broker.kv_get(bucket, "controller")
    assert entry is not None and (entry.value, entry.revision) == (b"ctl-1 again", rev2)
    # a deleted key can be created again
    await broker.kv_delete(bucket, "controller")
    assert await broker.kv_get(bucket, "controller") is None
    assert await broker.kv_create(bucket, "controller", b"ctl-3") is not None


async def test_kv_entries_are_the_current_values(broker: NatsBroker) -> None:
    bucket = names.PLACEMENT_BUCKET
    assert await broker.kv_entries(bucket) == {}
    await broker.kv_put(bucket, "vm-1", b"on A")
    await broker.kv_put(bucket, "vm-2", b"on B")
    last = await broker.kv_put(bucket, "vm-1", b"on B")
    await broker.kv_put(bucket, "vm-3", b"on A")
    await broker.kv_delete(bucket, "vm-3")
    entries = await broker.kv_entries(bucket)
    assert sorted(entries) == ["vm-1", "vm-2"]
    assert (entries["vm-1"].value, entries["vm-1"].revision) == (b"on B", last)
    assert entries["vm-2"].value == b"on B"


async def test_kv_entries_end_while_the_bucket_is_written_faster_than_it_is_read(
    broker: NatsBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host entries change every beat of every host: a listing must not chase them. Here, one
    entry a page, every host the listing has read beats again before the next page (as a busy
    fleet does to a slow reader): there is always more to read, and the listing still ends."""
    from nats.js.client import JetStreamContext

    from vmbusops.fleet import nats_broker

    bucket = names.HOSTS_BUCKET
    for host in ("hv1", "hv2", "hv3"):
        await broker.kv_put(bucket, host, b"beat 0")
    fetch = JetStreamContext.PullSubscription.fetch
    read: set[str] = set()

    async def beat_then_fetch(self: JetStreamContext.PullSubscription, *args: Any, **kw: Any) -> Any:
        js = broker._js
        assert js is not None
        for subject in sorted(read):
            await js.publish(subject, b"beat again")
        msgs = await fetch(self, *args, **kw)
        read.update(m.subject for m in msgs)
        return msgs

    monkeypatch.setattr(nats_broker, "_KV_PAGE", 1)
    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", beat_then_fetch)
    with trio.fail_after(nats_broker.DEFAULT_REQUEST_TIMEOUT * 2):  # a guard against the chase
        entries = await broker.kv_entries(bucket)
    assert sorted(entries) == ["hv1", "hv2", "hv3"]


async def test_kv_entries_leave_out_no_key_while_every_key_is_rewritten(
    nats_server: NatsServer, broker: NatsBroker
) -> None:
    """Hosts beat while the controller lists their entries. A key whose old value was removed
    before the listing read it, and whose new one came after the listing's count ended, was left
    out, and the controller called that host dead ("lost its lease") though it beat on time. Here
    twenty hosts beat as fast as they can through another connection: no listing may lack one
    (before the fix, about one listing in twenty-five did)."""
    bucket = names.HOSTS_BUCKET
    hosts = [f"HV-{i:02d}" for i in range(20)]
    async with open_broker(nats_server.url, name="agents") as agents:
        for host in hosts:
            await agents.kv_put(bucket, host, b"beat 0")
        incomplete: list[set[str]] = []
        async with trio.open_nursery() as nursery:

            async def beat(host: str) -> None:
                n = 0
                while True:
                    n += 1
                    await agents.kv_put(bucket, host, b"beat %d" % n)

            for host in hosts:
                nursery.start_soon(beat, host)
            for _ in range(400):
                listed = await broker.kv_entries(bucket)
                if set(hosts) - set(listed):
                    incomplete.append(set(hosts) - set(listed))
            nursery.cancel_scope.cancel()
    assert incomplete == []


async def test_work_is_redelivered_until_acked_and_never_after_term(broker: NatsBroker) -> None:
    await broker.ensure_work_consumer("HV-A", ack_wait=1.0)
    await broker.publish(names.work_subject("HV-A"), b"dispatch 1", msg_id="dispatch-1")
    await broker.publish(names.work_subject("HV-B"), b"not for A", msg_id="dispatch-b")
    first = await broker.fetch_work("HV-A", batch=10, timeout=5)
    assert [(d.data, d.num_delivered) for d in first] == [(b"dispatch 1", 1)]
    # not acked: it comes back after the ack wait, counted
    again = await broker.fetch_work("HV-A", batch=10, timeout=10)
    assert [(d.data, d.num_delivered) for d in again] == [(b"dispatch 1", 2)]
    assert again[0].seq == first[0].seq
    await broker.ack(again[0])
    await broker.publish(names.work_subject("HV-A"), b"garbage", msg_id="dispatch-2")
    bad = await broker.fetch_work("HV-A", batch=10, timeout=5)
    assert [d.data for d in bad] == [b"garbage"]
    await broker.term(bad[0])
    await broker.publish(names.work_subject("HV-A"), b"dispatch 3", msg_id="dispatch-3")
    # past the ack wait: only the new message, neither the acked nor the termed one
    await trio.sleep(1.5)
    rest = await broker.fetch_work("HV-A", batch=10, timeout=2)
    assert [(d.data, d.num_delivered) for d in rest] == [(b"dispatch 3", 1)]
    await broker.ack(rest[0])
    assert await broker.fetch_work("HV-A", batch=10, timeout=0.3) == []


async def test_a_bundle_round_trips_through_the_object_store(broker: NatsBroker) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    digest = hashlib.sha256(data).hexdigest()
    assert await broker.get_bundle(digest) is None
    await broker.put_bundle(digest, data)
    await broker.put_bundle(digest, data)  # named by its content: a second put is harmless
    assert await broker.get_bundle(digest) == data
    small = b"PK\x03\x04 tiny"
    await broker.put_bundle(hashlib.sha256(small).hexdigest(), small)
    assert await broker.get_bundle(hashlib.sha256(small).hexdigest()) == small


async def test_ensure_fleet_twice_and_from_a_second_controller(
    nats_server: NatsServer, broker: NatsBroker
) -> None:
    await broker.publish(names.CTL_SUBJECT, b"kept", msg_id="kept")
    await broker.ensure_work_consumer("HV-A")
    await broker.ensure_fleet()
    async with open_broker(nats_server.url, name="second-controller") as second:
        await second.ensure_fleet()
        await second.ensure_work_consumer("HV-A")
        await second.ensure_work_consumer("HV-A", ack_wait=5.0)
        assert [m.data for m in await second.read_log(after=0, batch=5, timeout=5)] == [b"kept"]
    assert await broker.last_log_seq() == 1


async def test_an_unreachable_server_is_a_broker_error(nats_server: NatsServer) -> None:
    url = nats_server.url
    await trio.to_thread.run_sync(nats_server.kill)
    with pytest.raises(BrokerError, match="connect to"):
        async with open_broker(url, request_timeout=1.0):
            pass


async def test_work_waits_across_a_killed_and_restarted_server(
    nats_server: NatsServer, broker: NatsBroker
) -> None:
    await broker.ensure_work_consumer("HV-A")
    await broker.publish(names.work_subject("HV-A"), b"dispatch 1", msg_id="dispatch-1")
    await trio.to_thread.run_sync(lambda: nats_server.restart(hard=True))
    async with open_broker(nats_server.url, host="HV-A", name="agent") as agent:
        work = await agent.fetch_work("HV-A", batch=5, timeout=10)
        assert [d.data for d in work] == [b"dispatch 1"]
        await agent.ack(work[0])
    # the controller's connection came back by itself
    while True:
        try:
            assert (await broker.publish(names.CTL_SUBJECT, b"after", msg_id="after")).seq == 1
            break
        except BrokerError:
            await trio.sleep(0.1)
