"""OutOfProc framing: round trips, chunking, and every way a peer can write garbage."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbusops.errors import FramingError
from vmbusops.psrp.framing import (
    POOL_GUID,
    DataStream,
    Packet,
    PacketKind,
    PacketReader,
    encode,
    parse_line,
)

GUID = uuid.UUID("6c9a3ea1-6c5c-4a1b-9e44-3f3f7a6c2b10")


def read_all(data: bytes, chunk: int | None = None) -> list[Packet]:
    reader = PacketReader()
    step = chunk or max(1, len(data))
    out: list[Packet] = []
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
        out.extend(reader)
    reader.feed_eof()
    return out


def test_encodes_exactly_what_powershell_writes() -> None:
    assert encode(Packet(kind=PacketKind.DATA, guid=POOL_GUID, data=b"\x00\x01")) == (
        b"<Data Stream='Default' PSGuid='00000000-0000-0000-0000-000000000000'>AAE=</Data>\n"
    )
    assert encode(Packet(kind=PacketKind.SIGNAL_ACK, guid=GUID)) == (
        b"<SignalAck PSGuid='6c9a3ea1-6c5c-4a1b-9e44-3f3f7a6c2b10' />\n"
    )
    assert encode(Packet(kind=PacketKind.DATA, guid=GUID, stream=DataStream.PROMPT_RESPONSE)) == (
        b"<Data Stream='PromptResponse' PSGuid='6c9a3ea1-6c5c-4a1b-9e44-3f3f7a6c2b10'></Data>\n"
    )


@pytest.mark.parametrize("kind", list(PacketKind))
def test_every_kind_round_trips(kind: PacketKind) -> None:
    packet = Packet(kind=kind, guid=GUID, data=b"payload" if kind is PacketKind.DATA else b"")
    assert read_all(encode(packet)) == [packet]


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    chunk=st.integers(min_value=1, max_value=97),
)
def test_any_chunking_gives_the_same_packets(payloads: list[bytes], chunk: int) -> None:
    packets = [Packet(kind=PacketKind.DATA, guid=uuid.UUID(int=i + 1), data=p) for i, p in enumerate(payloads)]
    wire = b"".join(encode(p) for p in packets)
    assert read_all(wire, chunk) == packets


def test_crlf_bom_and_other_quoting_are_accepted() -> None:
    assert parse_line(b"<CommandAck PSGuid='%s' />\r" % str(GUID).encode()).kind is PacketKind.COMMAND_ACK
    assert parse_line(b'<CloseAck PSGuid="%s"/>' % str(GUID).encode()).kind is PacketKind.CLOSE_ACK
    packet = parse_line(b'<Data PSGuid="%s" Stream="Default"> aGk= </Data>' % str(GUID).encode())
    assert packet.data == b"hi"
    reader = PacketReader()
    reader.feed(b"\xef\xbb\xbf" + encode(Packet(kind=PacketKind.DATA_ACK)))
    assert reader.next_packet() == Packet(kind=PacketKind.DATA_ACK)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"Windows PowerShell banner", "not an OutOfProc packet"),
        (b"", "empty line"),
        (b"<Data Stream='Default' PSGuid='nope'>AA==</Data>", "PSGuid"),
        (b"<Data Stream='Default' PSGuid='%s'>***</Data>" % str(GUID).encode(), "base64"),
        (b"<Data Stream='Other' PSGuid='%s'>AA==</Data>" % str(GUID).encode(), "Stream"),
        (b"<Hello PSGuid='%s' />" % str(GUID).encode(), "unknown OutOfProc packet <Hello>"),
        (b"<DataAck />", "no PSGuid"),
        (b"<Data Stream='Default' PSGuid='%s'>AA==" % str(GUID).encode(), "malformed"),
        (b"<CloseAck PSGuid='%s'>text</CloseAck>" % str(GUID).encode(), "must be empty"),
    ],
)
def test_garbage_is_a_clear_framing_error(line: bytes, words: str) -> None:
    with pytest.raises(FramingError, match=words):
        read_all(line + b"\n")


def test_truncated_packet_at_eof_is_an_error_not_a_hang() -> None:
    wire = encode(Packet(kind=PacketKind.DATA, guid=GUID, data=b"x" * 100))
    reader = PacketReader()
    reader.feed(wire[:-10])
    assert reader.next_packet() is None
    with pytest.raises(FramingError, match="ended in the middle of a packet"):
        reader.feed_eof()


def test_a_line_without_end_is_refused_before_it_is_buffered_whole() -> None:
    reader = PacketReader(max_line=1000)
    reader.feed(b"<Data Stream='Default' PSGuid='x'>")
    with pytest.raises(FramingError, match="without a line break"):
        reader.feed(b"A" * 2000)


def test_error_messages_quote_only_the_start_of_a_huge_line() -> None:
    with pytest.raises(FramingError) as info:
        read_all(b"x" * 10_000 + b"\n")
    assert len(str(info.value)) < 600


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_packets_or_framing_errors_only(data: bytes) -> None:
    reader = PacketReader(max_line=256)
    try:
        reader.feed(data)
        list(reader)
        reader.feed_eof()
    except FramingError:
        pass
