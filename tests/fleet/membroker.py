"""The fleet's broker in memory, for controller tests on trio's MockClock: one :class:`Bus` (the
server's state) and a :class:`MemBroker` per connection, each of which a test can stall or break."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from vmbusops.fleet import names
from vmbusops.fleet.broker import BrokerError, Delivery, KvEntry, PubAck, StreamMessage


@dataclass
class Bus:
    log: list[StreamMessage] = field(default_factory=list)
    work: dict[str, list[bytes]] = field(default_factory=dict)
    ids: dict[tuple[bool, str], int] = field(default_factory=dict)
    buckets: dict[str, dict[str, KvEntry]] = field(default_factory=dict)
    revision: int = 0
    #: What happened, in order: ("fact", connection, message id) and ("lease", connection, value).
    events: list[tuple[str, str, str]] = field(default_factory=list)
    grew: trio.Event = field(default_factory=trio.Event)


class MemBroker:
    """:class:`vmbusops.fleet.broker.Broker` over a :class:`Bus`, as the connection ``name``.

    It serves a controller: what only an agent does (pulling and settling work, bundles in the
    object store) fails the test that calls it, since these tests run no agent."""

    def __init__(self, bus: Bus, name: str) -> None:
        self.bus = bus
        self.name = name
        #: While set and not yet fired, this connection's publishes on the log wait for it.
        self.stall: trio.Event | None = None
        #: This connection's writes to a bucket fail (the server cannot be reached for them).
        self.kv_broken = False

    async def ensure_fleet(self) -> None:
        await trio.lowlevel.checkpoint()

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> PubAck:
        return (await self.publish_many([(subject, data, msg_id)]))[0]

    async def publish_many(self, messages: Sequence[tuple[str, bytes, str]]) -> list[PubAck]:
        if self.stall is not None and any(s.startswith("vmbusops.log.") for s, _, _ in messages):
            await self.stall.wait()
        await trio.lowlevel.checkpoint()
        bus, acks = self.bus, []
        for subject, data, msg_id in messages:
            on_log = subject.startswith("vmbusops.log.")
            if (on_log, msg_id) in bus.ids:  # each stream has its own duplicate window
                acks.append(PubAck(stream="", seq=bus.ids[on_log, msg_id], duplicate=True))
            elif on_log:
                bus.log.append(StreamMessage(subject=subject, seq=len(bus.log) + 1, data=data))
                bus.ids[True, msg_id] = len(bus.log)
                bus.events.append(("fact", self.name, msg_id))
                acks.append(PubAck(stream=names.LOG_STREAM, seq=len(bus.log), duplicate=False))
            else:
                bus.work.setdefault(subject, []).append(data)
                bus.ids[False, msg_id] = 0
                acks.append(PubAck(stream=names.WORK_STREAM, seq=0, duplicate=False))
        bus.grew.set()
        bus.grew = trio.Event()
        return acks

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        await trio.lowlevel.checkpoint()
        return self.bus.buckets.get(bucket, {}).get(key)

    def _write(self, bucket: str, key: str, value: bytes) -> int:
        if self.kv_broken:
            raise BrokerError(f"write {bucket}/{key}: timed out")
        self.bus.revision += 1
        self.bus.buckets.setdefault(bucket, {})[key] = KvEntry(key, value, self.bus.revision)
        if bucket == names.LEASES_BUCKET:
            self.bus.events.append(("lease", self.name, value.decode()))
        return self.bus.revision

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        await trio.lowlevel.checkpoint()
        return self._write(bucket, key, value)

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        await trio.lowlevel.checkpoint()
        return None if key in self.bus.buckets.get(bucket, {}) else self._write(bucket, key, value)

    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int | None:
        await trio.lowlevel.checkpoint()
        entry = self.bus.buckets.get(bucket, {}).get(key)
        return self._write(bucket, key, value) if entry is not None and entry.revision == last else None

    async def kv_entries(self, bucket: str) -> dict[str, KvEntry]:
        await trio.lowlevel.checkpoint()
        return dict(self.bus.buckets.get(bucket, {}))

    async def kv_delete(self, bucket: str, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self.bus.buckets.get(bucket, {}).pop(key, None)

    async def ensure_work_consumer(self, host: str, *, ack_wait: float = 30.0) -> None:
        await trio.lowlevel.checkpoint()

    async def delete_work_consumer(self, host: str) -> None:
        await trio.lowlevel.checkpoint()

    async def fetch_work(self, host: str, *, batch: int, timeout: float) -> list[Delivery]:
        raise _agents_only()

    async def ack(self, delivery: Delivery) -> None:
        raise _agents_only()

    async def term(self, delivery: Delivery) -> None:
        raise _agents_only()

    async def read_log(self, *, after: int, batch: int, timeout: float) -> list[StreamMessage]:
        with trio.move_on_after(timeout):
            while len(self.bus.log) <= after:
                await self.bus.grew.wait()
        return self.bus.log[after : after + batch]

    async def last_log_seq(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self.bus.log)

    async def put_bundle(self, digest: str, data: bytes) -> None:
        raise _agents_only()

    async def get_bundle(self, digest: str) -> bytes | None:
        raise _agents_only()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _agents_only() -> AssertionError:
    return AssertionError("MemBroker serves controllers: an agent's calls are tested against a real nats-server")

