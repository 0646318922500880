"""Every private name of psrpcore 0.3.1 the PSRP client relies on, in one list.

An upgrade of psrpcore that renames or reshapes one of them fails here, by name, instead of
somewhere in the middle of a pipeline. Where each is used: client.py (the receive path, the
templated CreatePipeline, host responses), encode.py (templates), decode.py (the type
registry), convert.py (extended invocation info).
"""

from __future__ import annotations

import inspect

import psrpcore


def test_the_private_names_the_client_uses_are_there() -> None:
    from psrpcore._client import _ClientPipeline
    from psrpcore._payload import PSRPMessage, create_message
    from psrpcore.types._base import TypeRegistry
    from psrpcore.types._complex import RemoteCommandInfo
    from psrpcore.types._serializer import _serialize_string

    assert issubclass(psrpcore.ClientPowerShell, _ClientPipeline)
    assert list(inspect.signature(create_message).parameters)[:5] == [
        "client", "message_type", "data", "runspace_pool_id", "pipeline_id",
    ]  # fmt: skip
    assert list(inspect.signature(PSRPMessage).parameters)[:6] == [
        "message_type", "data", "runspace_pool_id", "pipeline_id", "object_id", "stream_type",
    ]  # fmt: skip
    assert isinstance(TypeRegistry().type_registry, dict)
    assert RemoteCommandInfo._fields == ("CommandType", "Name", "Definition", "Visibility")
    assert _serialize_string("a_x0041_\n") == "a_x005F_x0041__x000A_"

    pool = psrpcore.ClientRunspacePool()
    for name in ("_send_buffer", "_fragment_counter", "_cipher", "pipeline_table", "_ci_events"):
        assert hasattr(pool, name), name
    assert callable(pool._process_message)
    assert callable(pool._cipher.encrypt)
