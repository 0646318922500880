"""What the fleet asks of its broker, as the trio side sees it: :class:`Broker`.

The one implementation a user runs is :class:`vmbusops.fleet.nats_broker.NatsBroker` (nats-py on
its own asyncio loop thread, :class:`vmbusops.psrp.ssh_bridge.AsyncioThread`). The controller and
the agent are written against this interface only, so what they need of JetStream is listed
here, and nothing else of nats-py leaks into them.

Every call may raise :class:`BrokerError` (the broker cannot be reached, a request timed out, the
server refused it); callers treat that as transient and retry with the same message id, which is
what makes a retried publish harmless (JetStream drops a second message with the same
``Nats-Msg-Id`` within the stream's duplicate window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vmbusops.errors import FailureCode, VmbusOpsError


class BrokerError(VmbusOpsError):
    """The broker could not do what was asked (unreachable, timed out, refused)."""

    code = FailureCode.BROKER_UNREACHABLE
    transient = True


class BrokerDenied(BrokerError):
    """The server refused this connection's user a subject: its configuration, not the weather
    (a host joined as another host's user, or a server whose permissions are not the fleet's)."""

    transient = False


@dataclass(frozen=True, slots=True)
class PubAck:
    stream: str
    seq: int
    #: The server had this message id already: nothing was added.
    duplicate: bool


@dataclass(frozen=True, slots=True)
class KvEntry:
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """A message read from a stream in order (the log)."""

    subject: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message taken from a durable consumer; it stays the consumer's until acked."""

    subject: str
    seq: int
    data: bytes
    #: How many times the server has delivered it (1: the first time).
    num_delivered: int
    #: The broker's handle, for :meth:`Broker.ack` / :meth:`Broker.term`.
    handle: object


class Broker(Protocol):
    async def ensure_fleet(self) -> None:
        """Create the fleet's streams, buckets and object store if missing (controller only;
        an agent's user may not create them)."""

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> PubAck:
        """Publish to a stream and wait for its acknowledgement."""

    async def publish_many(self, messages: Sequence[tuple[str, bytes, str]]) -> list[PubAck]:
        """Publish (subject, data, message id) each, in this order, without waiting for one
        acknowledgement before sending the next; their acknowledgements. A failure of any raises
        (some may have been taken: a retry with the same ids is harmless)."""

    # key-value ------------------------------------------------------------
    async def kv_get(self, bucket: str, key: str) -> KvEntry | None: ...

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Write unconditionally; the new revision."""

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        """Write only if the key has no value; None if it has one."""

    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int | None:
        """Write only if the key's revision is still ``last``; None if it is not (compare-and-set)."""

    async def kv_entries(self, bucket: str) -> dict[str, KvEntry]:
        """Every key's current value (deleted keys left out)."""

    async def kv_delete(self, bucket: str, key: str) -> None: ...

    # work (durable pull consumers on the work stream) --------------------
    async def ensure_work_consumer(self, host: str, *, ack_wait: float = 30.0) -> None:
        """The host's durable pull consumer on its work subject (controller creates it); a
        message not acked within ``ack_wait`` seconds is delivered again."""

    async def delete_work_consumer(self, host: str) -> None: ...

    async def fetch_work(self, host: str, *, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages for ``host``; [] when none came within ``timeout``."""

    async def ack(self, delivery: Delivery) -> None:
        """Done with this message; sent without waiting for the broker to confirm it (one that
        is lost is delivered again after the consumer's ack wait)."""

    async def term(self, delivery: Delivery) -> None:
        """Never deliver this message again (it cannot be understood)."""

    # the log (read in order from a sequence) -----------------------------
    async def read_log(self, *, after: int, batch: int, timeout: float) -> list[StreamMessage]:
        """The log's messages with sequence > ``after``, in order, up to ``batch`` of them;
        [] when none came within ``timeout``. Consecutive calls continue where the last ended."""

    async def last_log_seq(self) -> int: ...

    # bundles ---------------------------------------------------------------
    async def put_bundle(self, digest: str, data: bytes) -> None: ...

    async def get_bundle(self, digest: str) -> bytes | None: ...

    async def aclose(self) -> None: ...
