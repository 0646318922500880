"""OutOfProc framing, sans-IO.

Theory of operation
-------------------
PowerShell's OutOfProc transport (``powershell -ServerMode``, ``pwsh -sshs``, Hyper-V sockets)
carries PSRP fragments as one small XML element per line::

    <Data Stream='Default' PSGuid='G'>BASE64 FRAGMENTS</Data>
    <Command PSGuid='G' />       <CommandAck PSGuid='G' />
    <Signal PSGuid='G' />        <SignalAck PSGuid='G' />
    <Close PSGuid='G' />         <CloseAck PSGuid='G' />
                                 <DataAck PSGuid='G' />

``G`` is a pipeline id, or the all-zero GUID for the runspace pool. The server acknowledges each
client packet; the client does not acknowledge the server's ``Data``.

This module knows only the packet grammar: :func:`encode` turns a :class:`Packet` into one line of
bytes, and :class:`PacketReader` turns bytes, fed in chunks of any size, back into packets. It
does no I/O, so the same code serves the client over a child's pipes, over SSH, and the
simulator over its own stdin/stdout, and it is tested with plain bytes.

A reader never hangs and never grows without bound on bad input: a line that is not a packet
raises :class:`~vmbusops.errors.FramingError` naming what was wrong and quoting the start of the
line; a line longer than ``max_line`` raises before it is buffered whole; end of input in the
middle of a line raises at :meth:`PacketReader.feed_eof`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import uuid
from collections import deque
from dataclasses import dataclass
from xml.etree import ElementTree

from vmbusops.errors import FramingError

POOL_GUID = uuid.UUID(int=0)
DEFAULT_MAX_LINE = 64 * 1024 * 1024


class PacketKind(enum.Enum):
    DATA = "Data"
    DATA_ACK = "DataAck"
    COMMAND = "Command"
    COMMAND_ACK = "CommandAck"
    SIGNAL = "Signal"
    SIGNAL_ACK = "SignalAck"
    CLOSE = "Close"
    CLOSE_ACK = "CloseAck"

    @property
    def ack(self) -> PacketKind:
        """The packet that acknowledges this one."""
        return _ACK_OF[self]


_ACK_OF = {
    PacketKind.DATA: PacketKind.DATA_ACK,
    PacketKind.COMMAND: PacketKind.COMMAND_ACK,
    PacketKind.SIGNAL: PacketKind.SIGNAL_ACK,
    PacketKind.CLOSE: PacketKind.CLOSE_ACK,
}
_KIND_BY_TAG = {kind.value: kind for kind in PacketKind}


class DataStream(enum.Enum):
    DEFAULT = "Default"
    PROMPT_RESPONSE = "PromptResponse"


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    kind: PacketKind
    guid: uuid.UUID = POOL_GUID
    data: bytes = b""
    stream: DataStream = DataStream.DEFAULT

    @property
    def pipeline_id(self) -> uuid.UUID | None:
        """The pipeline this packet is about, or None for the runspace pool."""
        return None if self.guid == POOL_GUID else self.guid


def encode(packet: Packet) -> bytes:
    """One packet as one line of bytes, newline included."""
    guid = str(packet.guid).encode("ascii")
    if packet.kind is PacketKind.DATA:
        return b"<Data Stream='%s' PSGuid='%s'>%s</Data>\n" % (
            packet.stream.value.encode("ascii"),
            guid,
            base64.b64encode(packet.data),
        )
    return b"<%s PSGuid='%s' />\n" % (packet.kind.value.encode("ascii"), guid)


# PowerShell writes exactly these shapes (OutOfProcessUtils.CreateDataPacket / CreatePSGuidPacket);
# the regular expressions take them without building an XML tree. Anything else goes through a
# real XML parser, so harmless variations (other quotes, spacing) are still understood.
_DATA_RE = re.compile(
    rb"<Data Stream='(Default|PromptResponse)' PSGuid='([0-9A-Fa-f-]{36})'>([A-Za-z0-9+/=]*)</Data>"
)
_GUID_RE = re.compile(rb"<(\w+) PSGuid='([0-9A-Fa-f-]{36})'\s*/>")
# The same Data shape, its head matched and its base64 left to the strict decoder: that rejects
# any byte outside the alphabet, so what it takes is what _DATA_RE takes, read in one pass.
_DATA_HEAD_RE = re.compile(rb"<Data Stream='(Default|PromptResponse)' PSGuid='([0-9A-Fa-f-]{36})'>")
_DATA_TAIL = b"</Data>"
_BOM = b"\xef\xbb\xbf"


def _excerpt(line: bytes, limit: int = 120) -> str:
    text = line[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(line) > limit else "")


def _parse_guid(raw: str, line: bytes) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise FramingError(f"OutOfProc packet has an invalid PSGuid {raw!r}: {_excerpt(line)}") from None


def _parse_b64(raw: bytes, line: bytes) -> bytes:
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise FramingError(f"OutOfProc Data packet carries invalid base64: {_excerpt(line)}") from None


def parse_line(line: bytes) -> Packet:
    """Parse one line (without its newline) into a packet, or raise FramingError."""
    if line.endswith(b"\r"):
        line = line[:-1]
    m = _DATA_HEAD_RE.match(line)
    if m is not None and line.endswith(_DATA_TAIL):
        try:
            data = base64.b64decode(line[m.end() : -len(_DATA_TAIL)], validate=True)
        except (binascii.Error, ValueError):
            pass  # the full match below says what is wrong
        else:
            return Packet(
                kind=PacketKind.DATA,
                stream=DataStream(m.group(1).decode("ascii")),
                guid=_parse_guid(m.group(2).decode("ascii"), line),
                data=data,
            )
    m = _DATA_RE.fullmatch(line)
    if m is not None:
        return Packet(
            kind=PacketKind.DATA,
            stream=DataStream(m.group(1).decode("ascii")),
            guid=_parse_guid(m.group(2).decode("ascii"), line),
            data=_parse_b64(m.group(3), line),
        )
    m = _GUID_RE.fullmatch(line)
    if m is not None:
        kind = _KIND_BY_TAG.get(m.group(1).decode("ascii"))
        if kind is None or kind is PacketKind.DATA:
            raise FramingError(f"unknown OutOfProc packet <{m.group(1).decode('ascii')}>: {_excerpt(line)}")
        return Packet(kind=kind, guid=_parse_guid(m.group(2).decode("ascii"), line))
    return _parse_line_xml(line)


def _parse_line_xml(line: bytes) -> Packet:
    if not line.strip():
        raise FramingError("the PowerShell host wrote an empty line where an OutOfProc packet was expected")
    if not line.lstrip().startswith(b"<"):
        raise FramingError(
            f"the PowerShell host wrote text that is not an OutOfProc packet: {_excerpt(line)}",
            hint="is the host really started in server mode (-ServerMode / -sshs)? "
            "a profile or banner that prints text breaks the protocol",
        )
    try:
        # One bounded line; expat resolves no external entities and limits entity expansion.
        elem = ElementTree.fromstring(line)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise FramingError(f"malformed OutOfProc packet ({exc}): {_excerpt(line)}") from None
    kind = _KIND_BY_TAG.get(elem.tag)
    if kind is None:
        raise FramingError(f"unknown OutOfProc packet <{elem.tag}>: {_excerpt(line)}")
    raw_guid = elem.attrib.get("PSGuid")
    if raw_guid is None:
        raise FramingError(f"OutOfProc packet <{elem.tag}> has no PSGuid: {_excerpt(line)}")
    guid = _parse_guid(raw_guid, line)
    if kind is not PacketKind.DATA:
        if elem.text and elem.text.strip():
            raise FramingError(f"OutOfProc packet <{elem.tag}> must be empty: {_excerpt(line)}")
        return Packet(kind=kind, guid=guid)
    raw_stream = elem.attrib.get("Stream", "Default")
    try:
        stream = DataStream(raw_stream)
    except ValueError:
        raise FramingError(f"OutOfProc Data packet has unknown Stream {raw_stream!r}: {_excerpt(line)}") from None
    return Packet(
        kind=kind,
        guid=guid,
        stream=stream,
        data=_parse_b64((elem.text or "").strip().encode("ascii", errors="replace"), line),
    )


class PacketReader:
    """Turns a byte stream into packets. Feed bytes, then take packets until ``None``."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._packets: deque[Packet] = deque()
        self._max_line = max_line
        self._first_line = True
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole line."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Take bytes from the peer; parse every whole line they complete."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        self._buffer += data
        start = 0
        buf = self._buffer
        while True:
            nl = buf.find(b"\n", max(start, self._scan_from))
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            self._scan_from = start
            if self._first_line:
                self._first_line = False
                if line.startswith(_BOM):
                    line = line[len(_BOM) :]
            self._packets.append(parse_line(line))
        if start:
            del buf[:start]
        self._scan_from = len(buf)
        if len(buf) > self._max_line:
            raise FramingError(
                f"the PowerShell host wrote {len(buf)} bytes without a line break "
                f"(limit {self._max_line}); that is not OutOfProc framing: {_excerpt(bytes(buf))}"
            )

    def feed_eof(self) -> None:
        """The peer closed its side. Raises if that cut a packet in half."""
        self._eof = True
        if self._buffer:
            raise FramingError(
                f"the PowerShell host's output ended in the middle of a packet "
                f"({len(self._buffer)} bytes without a line break): {_excerpt(bytes(self._buffer))}"
            )

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes arrive."""
        return self._packets.popleft() if self._packets else None

    def __iter__(self) -> PacketReader:
        return self

    def __next__(self) -> Packet:
        packet = self.next_packet()
        if packet is None:
            raise StopIteration
        return packet
