"""Every use of psrpcore's private API, in one module.

psrpcore (pinned below 0.4) is the PSRP state machine for the client and the simulator, but
three things the agent needs have no public way in it: sending a message body serialized
elsewhere (the templated CreatePipeline of :mod:`.encode`), handing it a message reassembled
elsewhere (the client's receive path, the simulator's CreatePipeline reader), and a
few helpers and types of its serializer that the fast paths must match exactly. Each is
wrapped here under a name that says what it is for; the rest of vmbusops uses only this module
and psrpcore's public API. ``tests/psrp/test_psrpcore_privates.py`` checks every private name
below in the installed psrpcore and scans ``src/vmbusops`` so that nothing else reaches in: an
upgrade that renames or reshapes one fails there, by name.

=====================================================  ====================================
psrpcore private name                                  here
=====================================================  ====================================
``psrpcore._client._ClientPipeline``                   :data:`ClientPipeline`,
                                                       :class:`TemplatedPipeline`
``psrpcore._payload.PSRPMessage``                      :data:`ReceivedMessage`,
                                                       :func:`process_message`,
                                                       :func:`queue_client_message`,
                                                       :func:`take_queued_messages`
``psrpcore._payload.create_message``                   :func:`queue_client_message`
``RunspacePool._send_buffer``                          :func:`queue_client_message`,
                                                       :func:`has_queued_messages`,
                                                       :func:`take_queued_messages`
``RunspacePool._fragment_counter``                     :func:`queue_client_message`,
                                                       :func:`next_object_id`
``RunspacePool._cipher``                               :func:`session_cipher`
``RunspacePool._process_message``                      :func:`process_message`,
                                                       :class:`HookedServerRunspacePool`
``psrpcore.types._base.TypeRegistry``                  :data:`REHYDRATED_TYPES`
``psrpcore.types._complex.RemoteCommandInfo``          ``RemoteCommandInfo``, re-exported: the
                                                       namedtuple psrpcore rebuilds an
                                                       InvocationInfo's MyCommand as, which
                                                       :mod:`.convert` reads
``psrpcore.types._serializer._serialize_string``       :func:`serialize_string`
=====================================================  ====================================
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import psrpcore
from psrpcore._client import _ClientPipeline
from psrpcore._payload import PSRPMessage, create_message
from psrpcore.types import PSRPMessageType
from psrpcore.types._base import TypeRegistry
from psrpcore.types._complex import RemoteCommandInfo  # InvocationInfo.MyCommand, rebuilt; unexported
from psrpcore.types._serializer import _serialize_string

__all__ = [
    "REHYDRATED_TYPES",
    "ClientPipeline",
    "HookedServerRunspacePool",
    "ReceivedMessage",
    "RemoteCommandInfo",
    "TemplatedPipeline",
    "has_queued_messages",
    "next_object_id",
    "process_message",
    "queue_client_message",
    "serialize_string",
    "session_cipher",
    "take_queued_messages",
]

# -- types ------------------------------------------------------------------------------------------

ClientPipeline = _ClientPipeline
"""The base of psrpcore's client pipelines: :class:`psrpcore.ClientPowerShell` and
:class:`TemplatedPipeline`. The client keeps either kind, so it needs their common type."""

ReceivedMessage = PSRPMessage
"""One reassembled PSRP message, as psrpcore's pools hand it to their message handler."""

REHYDRATED_TYPES: Mapping[str, type] = TypeRegistry().type_registry
"""The .NET type names psrpcore deserializes into classes of its own, each to its class.

The fast decoder must fall back for exactly these (psrpcore's class may transform the object);
psrpcore keeps the table in a private singleton and exports no way to read it."""


class TemplatedPipeline(_ClientPipeline):
    """A client pipeline with psrpcore's state and no object model.

    A CreatePipeline body built from a template (:mod:`.encode`) is already serialized, so the
    pipeline psrpcore tracks needs no command list; :class:`psrpcore.ClientPowerShell` would
    want one, and only its private base class does without.
    """


class HookedServerRunspacePool(psrpcore.ServerRunspacePool):
    """psrpcore's server pool, with the handling of each received message open to subclasses.

    psrpcore reassembles a message and then deserializes it generically in its private
    ``_process_message``; there is no public hook in between. A subclass overrides
    :meth:`handle_message` and calls ``super().handle_message`` for what it leaves to psrpcore.
    """

    def _process_message(self, message: PSRPMessage) -> psrpcore.PSRPEvent[Any, Any]:
        return self.handle_message(message)

    def handle_message(self, message: PSRPMessage) -> psrpcore.PSRPEvent[Any, Any]:
        """psrpcore's own handling of ``message``: deserialize it, update state, make the event."""
        return super()._process_message(message)


# -- functions --------------------------------------------------------------------------------------


def serialize_string(value: str) -> str:
    """``value`` with psrpcore's CLIXML ``_xHHHH_`` escapes, before XML text escaping.

    A templated CreatePipeline must escape its strings exactly as psrpcore does; psrpcore's
    public ``serialize`` only takes whole objects and returns an element.
    """
    return _serialize_string(value)


def session_cipher(
    pool: psrpcore.ClientRunspacePool | psrpcore.ServerRunspacePool,
) -> psrpcore.PSRemotingCrypto:
    """The pool's session-key cipher, which encrypts and decrypts SecureStrings.

    Templates encrypt secrets with it and hand it to ``psrpcore.types.serialize``; the
    simulator decrypts with it. psrpcore keeps it private and has no accessor.
    """
    return pool._cipher


def process_message(
    pool: psrpcore.ClientRunspacePool,
    message_type: PSRPMessageType,
    body: bytes,
    *,
    runspace_pool_id: uuid.UUID,
    pipeline_id: uuid.UUID | None,
    object_id: int,
) -> psrpcore.PSRPEvent[Any, Any]:
    """Hand psrpcore one reassembled message body and return its event.

    The client reassembles fragments itself (psrpcore's ``receive_data`` re-slices its buffer
    for every fragment); this is the step psrpcore runs after reassembly, so its state machine
    sees exactly what it would have.
    """
    message = PSRPMessage(message_type, bytearray(body), runspace_pool_id, pipeline_id, object_id)
    return pool._process_message(message)


def queue_client_message(
    pool: psrpcore.ClientRunspacePool,
    message_type: PSRPMessageType,
    body: bytes,
    pipeline_id: uuid.UUID | None,
) -> None:
    """Queue a client message whose body is already serialized, for ``pool.data_to_send``.

    What psrpcore's ``prepare_message`` does once it has serialized a message; its public
    form only takes an object to serialize.
    """
    message = create_message(True, message_type, body, pool.runspace_pool_id, pipeline_id)
    pool._send_buffer.append(
        PSRPMessage(
            message_type,
            bytearray(message),
            pool.runspace_pool_id,
            pipeline_id,
            pool._fragment_counter,
            psrpcore.StreamType.default,
        )
    )


def has_queued_messages(pool: psrpcore.ClientRunspacePool) -> bool:
    """Whether psrpcore has queued messages that ``data_to_send`` has not taken yet.

    psrpcore queues answers (host responses, key exchange) while handling a message; the reader
    must wake the writer for them. ``data_to_send`` would take them, and has no peek.
    """
    return bool(pool._send_buffer)


def take_queued_messages(pool: psrpcore.ServerRunspacePool) -> list[PSRPMessage]:
    """Every message psrpcore has queued to send, whole and in order; the queue is left empty.

    The simulator frames whole messages itself; ``data_to_send`` would fragment them.
    """
    buffer = pool._send_buffer
    messages = list(buffer)
    buffer.clear()
    return messages


def next_object_id(pool: psrpcore.ServerRunspacePool) -> int:
    """The next PSRP object id from the pool's own counter (reading it takes it).

    A message built outside psrpcore must take its id from the same counter, or it and one of
    psrpcore's would share an id.
    """
    return pool._fragment_counter
