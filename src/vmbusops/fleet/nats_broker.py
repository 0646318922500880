"""The fleet's broker on NATS JetStream: :class:`NatsBroker`, opened with :func:`open_broker`.

nats-py is asyncio-only and the rest of vmbusops is trio, so the client lives on its own asyncio
loop in a daemon thread (:class:`vmbusops.psrp.ssh_bridge.AsyncioThread`, as the SSH transport
does); every method hands its coroutine to that loop and sleeps on the result. All state of the
connection (subscriptions, the log reader's consumer) is touched on that loop only.

What it maps to on JetStream (names in :mod:`vmbusops.fleet.names`):

- publish: a JetStream publish with ``Nats-Msg-Id`` (the stream drops a second copy within its
  duplicate window, and says so: :attr:`PubAck.duplicate`);
- the log: an ephemeral pull consumer (deliver from a start sequence, no acks) that the broker
  recreates whenever the caller asks from somewhere else than where the last read ended, after a
  reconnection (a restarted server may have lost it), or when it sees a gap in the consumer's own
  sequence; so reads continue exactly after ``after``, without gap or repeat;
- work: the host's durable pull consumer (explicit ack, redelivery after ``ack_wait``);
- key-value: nats-py's buckets with direct get (so a host's user can be allowed exactly its keys);
  compare-and-set failures are ``None``, not errors; a listing has every key (one its consumer
  missed while it was rewritten is read alone); a listing of a bucket whose stream has not moved
  (first and last sequence, message count) since the last listing is that listing again;
- bundles: nats-py's object store to write; reads by direct get of the metadata and then of each
  chunk, so a host needs no consumer of its own to read a bundle.

Every nats-py failure becomes a :class:`BrokerError` with a one-line message, without the
connection's password or token; a permission violation (the server refuses a publish or a
subscription: see :func:`vmbusops.fleet.natsserver.fleet_permissions`) fails the call that caused
it at once, instead of letting it time out (:mod:`vmbusops.fleet.nats_calls`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from vmbusops.errors import ConfigError
from vmbusops.fleet import names
from vmbusops.fleet.broker import BrokerError, Delivery, KvEntry, PubAck, StreamMessage
from vmbusops.fleet.nats_calls import CallGuard
from vmbusops.psrp.ssh_bridge import AsyncioThread, LoopClosedError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a JetStream API request may take before it is a :class:`BrokerError`.
DEFAULT_REQUEST_TIMEOUT = 5.0
#: KV history per bucket (names.py / the fleet design).
KV_HISTORY = {names.HOSTS_BUCKET: 1, names.PLACEMENT_BUCKET: 5, names.LEASES_BUCKET: 1}
#: The log is kept this long unless the controller says otherwise.
DEFAULT_LOG_MAX_AGE = 30 * 24 * 3600.0
#: A work message not acked within this is delivered again.
DEFAULT_ACK_WAIT = 30.0
#: The log reader's ephemeral consumer is removed by the server after this idle time.
_READER_IDLE = 300.0

_KV_OP = "KV-Operation"
#: Entries fetched at once when a bucket is listed.
_KV_PAGE = 256
_OBJ_DIGEST = "SHA-256="

#: How long closing a client whose first connection failed may take (it holds no state).
_CLOSE_AFTER_FAILED_CONNECT = 1.0

#: JetStream's error number for "stream name already in use with a different configuration".
_ERR_STREAM_IN_USE = 10058


class NatsBroker:
    """:class:`vmbusops.fleet.broker.Broker` on NATS JetStream. Open with :func:`open_broker`
    (or :meth:`connect`, then :meth:`aclose`)."""

    def __init__(
        self,
        bridge: AsyncioThread,
        *,
        host: str | None = None,
        secrets: tuple[str, ...] = (),
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        log_max_age: float = DEFAULT_LOG_MAX_AGE,
    ) -> None:
        self._bridge = bridge
        self._host = host
        self._guard = CallGuard(secrets, request_timeout)
        self._timeout = request_timeout
        self.log_max_age = log_max_age
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        # asyncio-side state: touched on the bridge's loop only
        self._reconnects = 0
        self._work_subs: dict[str, JetStreamContext.PullSubscription] = {}
        self._log_sub: JetStreamContext.PullSubscription | None = None
        self._log_consumer = ""
        self._log_next = 0
        self._log_cseq = 0
        self._log_epoch = -1
        self._cleanup: set[asyncio.Task[None]] = set()
        #: Bucket -> (its stream's (first seq, last seq, messages), the listing read then).
        self._kv_lists: dict[str, tuple[tuple[int, int, int], dict[str, KvEntry]]] = {}

    # connection --------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        host: str | None = None,
        name: str = "vmbusops",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        reconnect_wait: float = 0.5,
        log_max_age: float = DEFAULT_LOG_MAX_AGE,
    ) -> NatsBroker:
        """Connect; a first connection that fails is a :class:`BrokerError` at once, and after
        one that succeeded the client reconnects for ever (a restarted server is found again,
        what was subscribed is subscribed again). ``host``: the fleet host this
        connection acts for; its replies then come on ``_INBOX.<host>.>``, the only inbox a
        host's user may subscribe to."""
        if host is not None:
            names.check_host_name(host)
        bridge = AsyncioThread(f"nats-{name}")
        await bridge.start()
        self = cls(
            bridge,
            host=host,
            secrets=tuple(s for s in (password, token) if s),
            request_timeout=request_timeout,
            log_max_age=log_max_age,
        )
        tls: ssl.SSLContext | None = None
        if tls_ca or tls_cert or url.startswith("tls://"):
            try:
                tls = ssl.create_default_context(cafile=tls_ca)
                if tls_cert:
                    tls.load_cert_chain(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as exc:  # the configuration's to mend (exit 2), not the broker's
                await bridge.aclose()
                raise ConfigError(f"cannot load the TLS files for {self._guard.redact(url)}: {exc}",
                                  hint="the CA, certificate and key must be readable PEM files") from None
        options: dict[str, Any] = {
            "servers": [url],
            "name": name,
            # The first connection fails at once (the caller may try again); then it reconnects for ever.
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": reconnect_wait,
            "connect_timeout": max(1, int(request_timeout)),
            "error_cb": self._guard.on_error,
            "reconnected_cb": self._on_reconnected,
            "disconnected_cb": self._on_disconnected,
        }
        if user is not None:
            options["user"] = user
        if password is not None:
            options["password"] = password
        if token is not None:
            options["token"] = token
        if creds is not None:
            options["user_credentials"] = creds
        if tls is not None:
            options["tls"] = tls
        if host is not None:
            from vmbusops.fleet.natsserver import host_inbox_prefix

            options["inbox_prefix"] = host_inbox_prefix(host)

        async def go() -> None:
            nc = NatsClient()
            try:
                await nc.connect(**options)
            except BaseException:
                # Bounded: after a failed TLS upgrade (an untrusted certificate) nats-py's close
                # waits for ever on the plain stream that start_tls took over.
                with suppress(Exception):
                    await asyncio.wait_for(nc.close(), _CLOSE_AFTER_FAILED_CONNECT)
                raise
            nc.options["allow_reconnect"] = True
            nc.options["max_reconnect_attempts"] = -1
            self._nc = nc
            self._js = nc.jetstream(timeout=request_timeout)

        try:
            await self._call(f"connect to {url}", go(), ())
        except BaseException:
            await bridge.aclose()
            raise
        return self

    async def aclose(self) -> None:
        async def close() -> None:
            for task in list(self._cleanup):
                task.cancel()
            nc = self._nc
            if nc is not None and not nc.is_closed:
                with suppress(Exception):
                    await asyncio.wait_for(nc.close(), self._timeout)

        try:
            await self._bridge.run(close())
        except LoopClosedError:
            pass
        finally:
            await self._bridge.aclose()

    # asyncio-side callbacks
    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        log.info("nats: reconnected (%d)", self._reconnects)

    async def _on_disconnected(self) -> None:
        log.info("nats: disconnected")

    # calling into the loop ---------------------------------------------------------------
    async def _call(self, what: str, coro: Coroutine[Any, Any, T], subjects: tuple[str, ...]) -> T:
        """Run ``coro`` on the loop; every failure a :class:`BrokerError`; a permission
        violation on one of ``subjects`` (NATS wildcards) fails it at once."""
        try:
            return await self._bridge.run(self._guard.guarded(coro, subjects))
        except Exception as exc:
            raise self._guard.to_broker_error(what, exc, subjects) from None

    @property
    def _jsc(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerError("the broker is not connected")
        return self._js

    # creation (controller) ---------------------------------------------------------------
    async def ensure_fleet(self) -> None:
        await self._call("create the fleet's streams and buckets", self._ensure_fleet(), ("$JS.API.>",))

    async def _ensure_fleet(self) -> None:
        js = self._jsc
        await self._ensure_stream(
            api.StreamConfig(
                name=names.LOG_STREAM,
                subjects=[names.LOG_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.log_max_age,
                duplicate_window=names.DUPLICATE_WINDOW_SECONDS,
                discard=api.DiscardPolicy.OLD,
                num_replicas=1,
            )
        )
        await self._ensure_stream(
            api.StreamConfig(
                name=names.WORK_STREAM,
                subjects=[names.WORK_SUBJECTS],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=names.DUPLICATE_WINDOW_SECONDS,
                num_replicas=1,
            )
        )
        for bucket, history in KV_HISTORY.items():
            try:
                await js.create_key_value(
                    api.KeyValueConfig(
                        bucket=bucket, history=history, storage=api.StorageType.FILE, direct=True
                    )
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code != _ERR_STREAM_IN_USE:
                    raise
                await self._check_existing(f"KV_{bucket}")
        try:
            await js.create_object_store(
                names.BUNDLES_STORE,
                config=api.ObjectStoreConfig(storage=api.StorageType.FILE),
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code != _ERR_STREAM_IN_USE:
                raise
            await self._check_existing(f"OBJ_{names.BUNDLES_STORE}")

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        js = self._jsc
        try:
            await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _ERR_STREAM_IN_USE:
                raise
            # There with another configuration (another controller's log max age, say): bring
            # it to ours; what cannot change (retention, storage) fails here, loudly.
            await js.update_stream(config)

    async def _check_existing(self, stream: str) -> None:
        await self._jsc.stream_info(stream)

    async def ensure_work_consumer(self, host: str, *, ack_wait: float = DEFAULT_ACK_WAIT) -> None:
        consumer = names.work_consumer(host)
        config = api.ConsumerConfig(
            name=consumer,
            durable_name=consumer,
            filter_subject=names.work_subject(host),
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=1000,
        )

        async def go() -> None:
            await self._jsc.add_consumer(names.WORK_STREAM, config)

        await self._call(f"create the work consumer of {host}", go(), ("$JS.API.>",))

    async def delete_work_consumer(self, host: str) -> None:
        consumer = names.work_consumer(host)

        async def go() -> None:
            self._work_subs.pop(host, None)
            with suppress(nats.js.errors.NotFoundError):
                await self._jsc.delete_consumer(names.WORK_STREAM, consumer)

        await self._call(f"delete the work consumer of {host}", go(), ("$JS.API.>",))

    # publishing ----------------------------------------------------------------------------
    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> PubAck:
        async def go() -> PubAck:
            ack = await self._jsc.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            return PubAck(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

        return await self._call(f"publish to {subject}", go(), (subject,))

    async def publish_many(self, messages: Sequence[tuple[str, bytes, str]]) -> list[PubAck]:
        async def go() -> list[PubAck]:
            # Each publish writes its message before its first wait, so they go out in order.
            acks = await asyncio.gather(*(
                self._jsc.publish(subject, data, headers={"Nats-Msg-Id": msg_id}) for subject, data, msg_id in messages
            ))  # fmt: skip
            return [PubAck(stream=a.stream, seq=a.seq, duplicate=bool(a.duplicate)) for a in acks]

        subjects = tuple(sorted({m[0] for m in messages}))
        return await self._call(f"publish to {', '.join(subjects)}", go(), subjects)

    # key-value -----------------------------------------------------------------------------
    def _kv(self, bucket: str) -> KeyValue:
        # Built from what ensure_fleet created (direct get on): no stream lookup (a host may not).
        return KeyValue(
            name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=self._jsc, direct=True
        )

    @staticmethod
    def _kv_subjects(bucket: str, key: str) -> tuple[str, ...]:
        return (f"$KV.{bucket}.{key}", f"$JS.API.DIRECT.GET.KV_{bucket}.>", f"$JS.API.DIRECT.GET.KV_{bucket}")

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        async def go() -> KvEntry | None:
            try:
                entry = await self._kv(bucket).get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            return KvEntry(key=key, value=entry.value or b"", revision=entry.revision or 0)

        return await self._call(f"read {bucket}/{key}", go(), self._kv_subjects(bucket, key))

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        return await self._call(f"write {bucket}/{key}", self._kv(bucket).put(key, value), self._kv_subjects(bucket, key))

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        async def go() -> int | None:
            try:
                return await self._kv(bucket).create(key, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None

        return await self._call(f"create {bucket}/{key}", go(), self._kv_subjects(bucket, key))

    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int | None:
        async def go() -> int | None:
            try:
                return await self._kv(bucket).update(key, value, last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None

        return await self._call(f"update {bucket}/{key}", go(), self._kv_subjects(bucket, key))

    async def kv_delete(self, bucket: str, key: str) -> None:
        async def go() -> None:
            await self._kv(bucket).delete(key)

        await self._call(f"delete {bucket}/{key}", go(), self._kv_subjects(bucket, key))

    async def kv_entries(self, bucket: str) -> dict[str, KvEntry]:
        return await self._call(f"list {bucket}", self._kv_entries(bucket), ("$JS.API.>",))

    async def _kv_entries(self, bucket: str) -> dict[str, KvEntry]:
        stream, pre = f"KV_{bucket}", f"$KV.{bucket}."
        # A bucket nothing was written to since the last listing has that listing still: one
        # request, not a read of every key (placement: an entry per VM, written when one moves).
        found = (await self._jsc.stream_info(stream)).state
        mark = (found.first_seq, found.last_seq, found.messages)
        cached = self._kv_lists.get(bucket)
        if cached is not None and cached[0] == mark:
            return dict(cached[1])
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            filter_subject=pre + ">",
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        out: dict[str, KvEntry] = {}
        # The keys there are now: reading "until nothing is pending" chased a bucket written
        # faster than it was read (every beat of every host) for ever. It ends once each was read.
        state = (await self._jsc.stream_info(stream, subjects_filter=pre + ">")).state
        wanted = {subject[len(pre) :] for subject in (state.subjects or {})}
        seen: set[str] = set()
        info = await self._jsc.add_consumer(stream, config)
        sub = await self._jsc.pull_subscribe_bind(stream=stream, consumer=info.name)
        try:
            pending = info.num_pending or 0
            while pending > 0 and not wanted <= seen:
                msgs = await sub.fetch(min(pending, _KV_PAGE), timeout=self._timeout)
                for msg in msgs:
                    meta = msg.metadata
                    pending = meta.num_pending
                    key = msg.subject[len(pre) :]
                    seen.add(key)
                    op = (msg.headers or {}).get(_KV_OP)
                    if op in ("DEL", "PURGE"):
                        out.pop(key, None)
                    else:
                        out[key] = KvEntry(key=key, value=msg.data, revision=meta.sequence.stream)
        finally:
            await self._forget(sub, stream, info.name)
        # A key rewritten meanwhile may come after the count or not at all (its old value gone
        # first): a host missing from one listing looked dead. Each key not read is read alone.
        for key in sorted(wanted - seen):
            with suppress(nats.js.errors.KeyNotFoundError):  # deleted meanwhile (KeyDeletedError too)
                entry = await self._kv(bucket).get(key)
                out[key] = KvEntry(key=key, value=entry.value or b"", revision=entry.revision or 0)
        # Kept under the mark read before it: a write during it makes the next listing read again.
        self._kv_lists[bucket] = (mark, dict(out))
        return out

    async def _forget(self, sub: JetStreamContext.PullSubscription, stream: str, consumer: str | None) -> None:
        """Unsubscribe now; delete the ephemeral consumer in the background (best effort: the
        server removes it anyway once idle)."""
        with suppress(Exception):
            await sub.unsubscribe()

        async def delete() -> None:
            with suppress(Exception):
                if consumer:
                    await self._jsc.delete_consumer(stream, consumer)

        task = asyncio.get_running_loop().create_task(delete())
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    # work ----------------------------------------------------------------------------------
    async def fetch_work(self, host: str, *, batch: int, timeout: float) -> list[Delivery]:
        consumer = names.work_consumer(host)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{names.WORK_STREAM}.{consumer}"

        async def go() -> list[Delivery]:
            sub = self._work_subs.get(host)
            if sub is None:
                sub = await self._jsc.pull_subscribe_bind(stream=names.WORK_STREAM, durable=consumer)
                self._work_subs[host] = sub
            try:
                msgs = await sub.fetch(batch, timeout=timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                return []
            out = []
            for msg in msgs:
                meta = msg.metadata
                out.append(
                    Delivery(
                        subject=msg.subject,
                        seq=meta.sequence.stream,
                        data=msg.data,
                        num_delivered=meta.num_delivered,
                        handle=msg,
                    )
                )
            return out

        return await self._call(f"fetch work for {host}", go(), (next_subject,))

    def _msg(self, delivery: Delivery) -> Msg:
        if not isinstance(delivery.handle, Msg) or not delivery.handle.reply:
            raise BrokerError("this delivery did not come from this broker")
        return delivery.handle

    async def ack(self, delivery: Delivery) -> None:
        msg = self._msg(delivery)
        # Sent, not confirmed (no reply awaited): one that is lost has the message delivered
        # again after ack_wait, and the agent finds it taken (FleetStore.take) and runs nothing twice.
        await self._call(f"ack {delivery.subject} #{delivery.seq}", msg.ack(), (msg.reply,))

    async def term(self, delivery: Delivery) -> None:
        msg = self._msg(delivery)

        async def go() -> None:
            await msg.term()
            assert self._nc is not None
            await self._nc.flush(timeout=max(1, int(self._timeout)))

        await self._call(f"term {delivery.subject} #{delivery.seq}", go(), (msg.reply,))

    # the log -------------------------------------------------------------------------------
    async def read_log(self, *, after: int, batch: int, timeout: float) -> list[StreamMessage]:
        return await self._call("read the log", self._read_log(after, batch, timeout), ("$JS.API.>",))

    async def _read_log(self, after: int, batch: int, timeout: float) -> list[StreamMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retried = False
        while True:
            if self._log_sub is None or self._log_next != after + 1 or self._log_epoch != self._reconnects:
                await self._drop_log_reader()
                await self._open_log_reader(after + 1)
            sub = self._log_sub
            assert sub is not None
            left = deadline - loop.time()
            try:
                msgs = await sub.fetch(batch, timeout=max(left, 0.001))
            except (TimeoutError, nats.errors.TimeoutError):
                if self._nc is None or not self._nc.is_connected:  # not "up to date": nothing could come
                    raise BrokerError("the broker connection is down (reconnecting)") from None
                return []
            except Exception:
                # The consumer is gone (removed while idle, a server restarted): once more.
                await self._drop_log_reader()
                if retried:
                    raise
                retried = True
                continue
            return self._take_log(msgs, after)

    def _take_log(self, msgs: list[Msg], after: int) -> list[StreamMessage]:
        out: list[StreamMessage] = []
        for msg in msgs:
            stream_seq, consumer_seq = _sequences(msg)
            if consumer_seq != self._log_cseq + 1 or stream_seq <= after:
                # A gap or a repeat of the consumer's own numbering: what we have is in order
                # and complete up to here; the next read starts a new consumer after it.
                self._log_sub_stale()
                break
            self._log_cseq += 1
            after = stream_seq
            out.append(StreamMessage(subject=msg.subject, seq=after, data=msg.data))
        self._log_next = after + 1
        return out

    def _log_sub_stale(self) -> None:
        self._log_epoch = -1

    async def _open_log_reader(self, start: int) -> None:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start, 1),
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=_READER_IDLE,
            mem_storage=True,
            num_replicas=1,
        )
        epoch = self._reconnects
        info = await self._jsc.add_consumer(names.LOG_STREAM, config)
        assert info.name is not None
        self._log_sub = await self._jsc.pull_subscribe_bind(stream=names.LOG_STREAM, consumer=info.name)
        self._log_consumer = info.name
        self._log_next = start
        self._log_cseq = 0
        self._log_epoch = epoch

    async def _drop_log_reader(self) -> None:
        sub, self._log_sub = self._log_sub, None
        if sub is not None:
            await self._forget(sub, names.LOG_STREAM, self._log_consumer)

    async def last_log_seq(self) -> int:
        async def go() -> int:
            return int((await self._jsc.stream_info(names.LOG_STREAM)).state.last_seq)

        return await self._call("read the log's last sequence", go(), ("$JS.API.>",))

    # bundles -------------------------------------------------------------------------------
    def _store(self) -> ObjectStore:
        return ObjectStore(name=names.BUNDLES_STORE, stream=f"OBJ_{names.BUNDLES_STORE}", js=self._jsc)

    async def put_bundle(self, digest: str, data: bytes) -> None:
        async def go() -> None:
            store = self._store()
            with suppress(nats.js.errors.ObjectNotFoundError):
                info = await store.get_info(digest)
                if info.size == len(data) and not info.deleted:
                    return  # named by its content: it is there already
            await store.put(digest, data)

        await self._call(f"store bundle {digest[:12]}", go(), ("$JS.API.>", "$O.>"))

    async def get_bundle(self, digest: str) -> bytes | None:
        return await self._call(f"fetch bundle {digest[:12]}", self._get_bundle(digest), ("$JS.API.>",))

    async def _get_bundle(self, digest: str) -> bytes | None:
        js, stream, bucket = self._jsc, f"OBJ_{names.BUNDLES_STORE}", names.BUNDLES_STORE
        meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(digest.encode()).decode()}"
        try:
            raw = await js.get_msg(stream, subject=meta_subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        info = json.loads(raw.data or b"{}")
        if info.get("deleted"):
            return None
        size, nuid = int(info.get("size") or 0), info.get("nuid") or ""
        chunks: list[bytes] = []
        got, seq = 0, 1
        chunk_subject = f"$O.{bucket}.C.{nuid}"
        while got < size:
            msg = await js.get_msg(stream, seq=seq, subject=chunk_subject, direct=True, next=True)
            chunks.append(msg.data or b"")
            got += len(msg.data or b"")
            seq = int(msg.seq or 0) + 1
        data = b"".join(chunks)
        want = str(info.get("digest") or "")
        if want.upper().startswith(_OBJ_DIGEST):
            expected = base64.urlsafe_b64decode(want[len(_OBJ_DIGEST) :])
            if hashlib.sha256(data).digest() != expected:
                raise BrokerError(f"bundle {digest[:12]} in the object store is corrupt")
        return data


def _sequences(msg: Msg) -> tuple[int, int]:
    """A JetStream message's (stream, consumer) sequences from its reply subject (``$JS.ACK.<stream>.
    <consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``), without nats-py's whole
    metadata (a datetime per message); any other form through nats-py's parser."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[6])
    meta = msg.metadata
    return meta.sequence.stream, meta.sequence.consumer


@asynccontextmanager
async def open_broker(
    url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    creds: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    host: str | None = None,
    name: str = "vmbusops",
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    reconnect_wait: float = 0.5,
    log_max_age: float = DEFAULT_LOG_MAX_AGE,
) -> AsyncIterator[NatsBroker]:
    """``async with open_broker(url, ...) as broker``: connected, closed on the way out."""
    broker = await NatsBroker.connect(
        url,
        user=user,
        password=password,
        token=token,
        creds=creds,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        host=host,
        name=name,
        request_timeout=request_timeout,
        reconnect_wait=reconnect_wait,
        log_max_age=log_max_age,
    )
    try:
        yield broker
    finally:
        await broker.aclose()

