"""The receive path of the client's runspace pool: fragments to events, fast where it counts.

psrpcore's :class:`~psrpcore.ClientRunspacePool` re-slices its whole receive buffer for every
fragment (quadratic in the size of a Data packet, which carries many records) and deserializes
every message generically. :class:`ClientPool` is that pool with its ``receive_data`` and
``next_event`` taken over: fragments are cut out of each payload by offset, messages
reassembled per object id, the common stream records decoded by :func:`.decode.fast_decode`
and void one-string host calls by :func:`.decode.fast_host_line`. Every other message goes to
psrpcore's own handling (:func:`.psrpcore_private.process_message`), so its state machine sees
exactly what it would have. ``next_event`` returns a :class:`RecordEvent`, a
:class:`HostLineEvent` or psrpcore's own event.
"""

from __future__ import annotations

import struct
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import psrpcore
from psrpcore.types import HostMethodIdentifier, PSInvocationState, PSRPMessageType

from vmbusops.errors import PSRPError
from vmbusops.psrp.decode import fast_decode, fast_host_line
from vmbusops.psrp.psrpcore_private import process_message
from vmbusops.records import PipelineStateRecord, Record

__all__ = ["ClientPool", "HostLineEvent", "RecordEvent"]

_FRAGMENT_HEADER = struct.Struct(">QQBI")
_MESSAGE_TYPE = struct.Struct("<I")
_NO_PIPELINE = bytes(16)
#: Every message type by its number: a dict lookup, where calling the enum costs ten times as
#: much on the path of every record.
_TYPES = {t.value: t for t in PSRPMessageType}

# Message types decoded on the fast path. PipelineState is decoded fast too, in next_event,
# which then moves psrpcore's pipeline to that state itself.
_FAST_TYPES = frozenset(
    {
        PSRPMessageType.PipelineOutput,
        PSRPMessageType.ErrorRecord,
        PSRPMessageType.WarningRecord,
        PSRPMessageType.VerboseRecord,
        PSRPMessageType.DebugRecord,
        PSRPMessageType.InformationRecord,
        PSRPMessageType.ProgressRecord,
    }
)


@dataclass(frozen=True, slots=True)
class HostLineEvent:
    """What the pool's message hook returns for a void one-string host call decoded fast."""

    pipeline_id: uuid.UUID
    method: HostMethodIdentifier
    text: str


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """What the pool's message hook returns for a fast-decoded record."""

    pipeline_id: uuid.UUID | None
    record: Record



class ClientPool(psrpcore.ClientRunspacePool):
    """psrpcore's client pool, with the receive path taken over for speed (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._partial: dict[int, list[bytes]] = {}
        self._complete: deque[tuple[int, bytes]] = deque()
        self._pipeline_ids: dict[bytes, uuid.UUID] = {}

    def receive_data(self, data: psrpcore.PSRPPayload) -> None:
        buf = data.data
        view = memoryview(buf)
        offset, size = 0, len(buf)
        while offset < size:
            if size - offset < _FRAGMENT_HEADER.size:
                raise PSRPError(f"a PSRP fragment header is cut short ({size - offset} bytes)")
            object_id, fragment_id, flags, length = _FRAGMENT_HEADER.unpack_from(buf, offset)
            start = offset + _FRAGMENT_HEADER.size
            offset = start + length
            if offset > size:
                raise PSRPError(f"a PSRP fragment claims {length} bytes but the packet has {size - start}")
            parts = self._partial.get(object_id)
            if parts is None:
                if fragment_id != 0:
                    raise PSRPError(f"PSRP object {object_id} starts with fragment {fragment_id}, not 0")
                if flags & 0x2:  # start and end: the common case, one fragment per message
                    self._complete.append((object_id, bytes(view[start:offset])))
                    continue
                self._partial[object_id] = parts = []
            elif fragment_id != len(parts):
                raise PSRPError(f"PSRP object {object_id}: expected fragment {len(parts)}, got {fragment_id}")
            parts.append(bytes(view[start:offset]))
            if flags & 0x2:
                del self._partial[object_id]
                self._complete.append((object_id, b"".join(parts)))

    def next_event(self) -> Any:
        if not self._complete:
            return None
        object_id, raw = self._complete.popleft()
        if len(raw) < 40:
            raise PSRPError(f"a PSRP message is {len(raw)} bytes, shorter than its 40-byte header")
        (type_value,) = _MESSAGE_TYPE.unpack_from(raw, 4)
        message_type = _TYPES.get(type_value)
        if message_type is None:
            raise PSRPError(f"unknown PSRP message type 0x{type_value:08X}")
        pid_bytes = raw[24:40]
        pipeline_id = self._pipeline_ids.get(pid_bytes)
        if pipeline_id is None and pid_bytes != _NO_PIPELINE:
            if len(self._pipeline_ids) > 4096:
                self._pipeline_ids.clear()
            pipeline_id = self._pipeline_ids[pid_bytes] = uuid.UUID(bytes_le=pid_bytes)
        body = raw[43:] if raw.startswith(b"\xef\xbb\xbf", 40) else raw[40:]
        if message_type in _FAST_TYPES:
            record = fast_decode(message_type, body)
            if record is not None:
                return RecordEvent(pipeline_id, record)
        elif message_type is PSRPMessageType.PipelineHostCall and pipeline_id is not None:
            # Void (ci -100): psrpcore keeps no state for it, so it need not see it.
            line = fast_host_line(body)
            if line is not None:
                return HostLineEvent(pipeline_id, *line)
        elif message_type is PSRPMessageType.PipelineState and pipeline_id in self.pipeline_table:
            state = fast_decode(message_type, body)
            if isinstance(state, PipelineStateRecord):
                # What psrpcore's _process_PipelineState does: move its pipeline to the state.
                self.pipeline_table[pipeline_id].state = PSInvocationState[state.state.value]
                return RecordEvent(pipeline_id, state)
        return process_message(
            self,
            message_type,
            body,
            runspace_pool_id=uuid.UUID(bytes_le=raw[8:24]),
            pipeline_id=pipeline_id,
            object_id=object_id,
        )
