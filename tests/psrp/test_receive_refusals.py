"""What the client's receive path refuses of a host's messages: each a PSRP error that says
what was wrong, never a crash of the pool."""

from __future__ import annotations

import struct

import psrpcore
import pytest
from psrpcore.types import PSRPMessageType

from vmbusops.errors import PSRPError
from vmbusops.psrp.receive import ClientPool, RecordEvent
from vmbusops.records import OutputRecord


def packet(message: bytes, object_id: int = 1) -> psrpcore.PSRPPayload:
    """One whole fragment (start and end) holding ``message``."""
    fragment = struct.pack(">QQBI", object_id, 0, 0x3, len(message)) + message
    return psrpcore.PSRPPayload(fragment, psrpcore.StreamType.default, None)


def message(message_type: int, body: bytes = b"<Obj RefId=\"0\"><S>x</S></Obj>") -> bytes:
    """A PSRP message: destination, type, pool and pipeline ids (none), then the body."""
    return struct.pack("<II", 2, message_type) + bytes(16) + bytes(16) + body


def test_an_unknown_message_type_is_refused_with_its_number() -> None:
    pool = ClientPool()
    pool.receive_data(packet(message(0x00DEAD00)))
    with pytest.raises(PSRPError, match="unknown PSRP message type 0x00DEAD00"):
        pool.next_event()


def test_a_message_shorter_than_its_header_is_refused() -> None:
    pool = ClientPool()
    pool.receive_data(packet(b"\x02\x00\x00\x00" * 5))
    with pytest.raises(PSRPError, match="20 bytes, shorter than its 40-byte header"):
        pool.next_event()


def test_a_known_message_type_is_decoded() -> None:
    """The lookup by number knows the types psrpcore does (here a record of the fast path)."""
    pool = ClientPool()
    pool.receive_data(packet(message(PSRPMessageType.PipelineOutput.value)))
    event = pool.next_event()
    assert isinstance(event, RecordEvent)
    assert event.record == OutputRecord(value="x")
