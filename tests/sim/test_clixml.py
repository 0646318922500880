"""The template-rendered records must be byte-for-byte what psrpcore's serializer produces."""

from __future__ import annotations

import datetime
import uuid
from xml.etree import ElementTree

import psrpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psrpcore.types import PSRPMessageType, deserialize

from vmbusops.sim import clixml
from vmbusops.sim.streams import SimError, SimObject

# Everything psrpcore can encode: no lone surrogates outside the range it escapes.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),
    max_size=60,
) | st.sampled_from(["", "_x", "_X0041_", "a\r\nb", "<&>", "\x00\x1f\x7f\x9f", "\U0001f600", "café"])


def _opened_server_pool() -> tuple[psrpcore.ClientRunspacePool, psrpcore.ServerRunspacePool]:
    client = psrpcore.ClientRunspacePool()
    server = psrpcore.ServerRunspacePool()
    client.open()
    server.receive_data(client.data_to_send())
    while server.next_event():
        pass
    client.receive_data(server.data_to_send())
    while client.next_event():
        pass
    return client, server


def _server_pipeline() -> psrpcore.ServerPipeline:
    client, server = _opened_server_pool()
    ps = psrpcore.ClientPowerShell(client)
    ps.add_command("Invoke-Command")
    ps.start()
    pipe = psrpcore.ServerPipeline(server, ps.pipeline_id)
    server.receive_data(client.data_to_send())
    server.next_event()
    pipe.start()
    server._send_buffer.clear()  # drop the Running state message
    return pipe


def _queued(pipe: psrpcore.ServerPipeline) -> bytes:
    """The one message psrpcore queued, without our knowledge of its framing."""
    buffer = pipe.runspace_pool._send_buffer
    assert len(buffer) == 1
    message = buffer.pop()
    return message.data


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(texts)
def test_informational_records_equal_psrpcore(message: str) -> None:
    pipe = _server_pipeline()
    rpid = pipe.runspace_pool.runspace_pool_id
    pid = pipe.pipeline_id
    for write, render, msg_type in (
        (pipe.write_verbose, clixml.verbose_xml, PSRPMessageType.VerboseRecord),
        (pipe.write_warning, clixml.warning_xml, PSRPMessageType.WarningRecord),
        (pipe.write_debug, clixml.debug_xml, PSRPMessageType.DebugRecord),
    ):
        write(message)
        assert clixml.psrp_message(msg_type, render(message), rpid, pid) == _queued(pipe)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        texts,
        # psrpcore picks I64 only above Int32.MaxValue; below Int32.MinValue see the test after.
        st.integers(min_value=-(2**31), max_value=2**63 - 1),
        st.booleans(),
    )
)
@pytest.mark.slow
def test_output_primitives_equal_psrpcore(value: object) -> None:
    pipe = _server_pipeline()
    pipe.write_output(value)
    expected = _queued(pipe)
    got = clixml.psrp_message(
        PSRPMessageType.PipelineOutput,
        clixml.output_xml(value),
        pipe.runspace_pool.runspace_pool_id,
        pipe.pipeline_id,
    )
    assert got == expected


def test_large_negative_integers_are_int64_unlike_psrpcore() -> None:
    # psrpcore writes <I32>-2147483649</I32>, which PowerShell cannot read back; we write I64.
    assert clixml.output_xml(-(2**31) - 1) == b"<I64>-2147483649</I64>"
    assert clixml.output_xml(-(2**31)) == b"<I32>-2147483648</I32>"
    assert clixml.output_xml(2**31) == b"<I64>2147483648</I64>"


@settings(max_examples=200, deadline=None)
@given(
    message=texts,
    source=texts,
    user=texts,
    computer=texts,
    pid=st.integers(min_value=0, max_value=2**32 - 1),
    ntid=st.integers(min_value=0, max_value=2**32 - 1),
    when=st.datetimes(min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2100, 1, 1)),
    tag=st.none() | texts,
)
def test_information_record_equals_psrpcore(
    message: str, source: str, user: str, computer: str, pid: int, ntid: int, when: datetime.datetime, tag: str | None
) -> None:
    pipe = _server_pipeline()
    pipe.write_information(
        message,
        source,
        time_generated=psrpcore.types.PSDateTime.fromisoformat(when.isoformat()),
        tags=[] if tag is None else [tag],
        user=user,
        computer=computer,
        process_id=pid,
        native_thread_id=ntid,
        managed_thread_id=0,
    )
    expected = _queued(pipe)
    data = clixml.information_xml(
        message,
        source=source,
        time_generated=when,
        user=user,
        computer=computer,
        process_id=pid,
        native_thread_id=ntid,
        tag=tag,
    )
    rpid = pipe.runspace_pool.runspace_pool_id
    assert clixml.psrp_message(PSRPMessageType.InformationRecord, data, rpid, pipe.pipeline_id) == expected


def test_fragments_reassemble_through_psrpcore_client() -> None:
    client, server = _opened_server_pool()
    big = "x" * (3 * clixml.MAX_FRAGMENT + 17)
    message = clixml.psrp_message(
        PSRPMessageType.PipelineOutput, clixml.output_xml(big), server.runspace_pool_id, None
    )
    frags = list(clixml.fragments(999, message))
    assert len(frags) == 4
    # Start flag only on the first fragment, end flag only on the last.
    assert [f[16] for f in frags] == [0x1, 0x0, 0x0, 0x2]
    client.receive_data(psrpcore.PSRPPayload(b"".join(frags), psrpcore.StreamType.default, None))
    event = client.next_event()
    assert isinstance(event, psrpcore.PipelineOutputEvent)
    assert event.data == big


def test_single_fragment_matches_psrpcore_data_to_send() -> None:
    _, server = _opened_server_pool()
    pipe_id = uuid.uuid4()
    server.prepare_message(None, message_type=PSRPMessageType.PipelineOutput, pipeline_id=pipe_id)
    oid = server._send_buffer[0].object_id
    payload = server.data_to_send()
    assert payload is not None
    message = clixml.psrp_message(PSRPMessageType.PipelineOutput, b"", server.runspace_pool_id, pipe_id)
    assert b"".join(clixml.fragments(oid, message)) == payload.data


def test_objects_and_errors_deserialize_as_powershell_types() -> None:
    client, server = _opened_server_pool()
    from vmbusops.sim.streams import SimError, SimObject

    obj = SimObject(
        ("Microsoft.HyperV.PowerShell.VirtualMachine", "System.Object"), (("Name", "web01"),), "vm"
    )
    err = SimError(
        message="boom", fqid="X,Y", category="ObjectNotFound", exception_type="System.ArgumentException"
    )
    events = []
    for oid, msg_type, data in (
        (101, PSRPMessageType.PipelineOutput, clixml.output_xml(obj)),
        (102, PSRPMessageType.ErrorRecord, clixml.error_xml(err)),
    ):
        msg = clixml.psrp_message(msg_type, data, server.runspace_pool_id, None)
        client.receive_data(
            psrpcore.PSRPPayload(b"".join(clixml.fragments(oid, msg)), psrpcore.StreamType.default, None)
        )
        events.append(client.next_event())
    out, error = events
    assert out.data.Name == "web01"
    assert out.data.PSTypeNames[0] == "Deserialized.Microsoft.HyperV.PowerShell.VirtualMachine"
    assert str(out.data) == "vm"
    record = error.record
    assert str(record.Exception.Message) == "boom"
    assert str(record.FullyQualifiedErrorId) == "X,Y"
    assert record.CategoryInfo.Category == psrpcore.types.ErrorCategory.ObjectNotFound
    assert str(record.CategoryInfo.Reason) == "ArgumentException"


@given(st.text())
def test_host_line_is_pwsh_shaped_and_means_what_psrpcore_would_send(text: str) -> None:
    from psrpcore.types import HostMethodIdentifier, PipelineHostCall

    from vmbusops.psrp.decode import fast_host_line
    from vmbusops.sim.clixml import host_line_xml, psrpcore_xml

    method = HostMethodIdentifier.WriteVerboseLine
    ours = host_line_xml(method.name, int(method), text)
    # The client's fast path takes it (pwsh's own bytes), and so does psrpcore's deserializer.
    assert fast_host_line(ours) == (method, text)
    theirs = psrpcore_xml(PipelineHostCall(ci=-100, mi=method, mp=[text]))
    decoded = [deserialize(ElementTree.fromstring(x), cipher=psrpcore.PSRemotingCrypto()) for x in (ours, theirs)]
    assert [(d.ci, d.mi, list(d.mp)) for d in decoded] == [(-100, method, [text])] * 2


flat_values = (
    texts
    | st.integers(min_value=-(2**31), max_value=2**63 - 1)
    | st.booleans()
    | st.none()
)


@settings(max_examples=300, deadline=None)
@given(
    type_names=st.lists(
        st.sampled_from(["Microsoft.HyperV.PowerShell.VirtualMachine", "System.Object", "A.B"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    properties=st.lists(
        st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,12}", fullmatch=True), flat_values), max_size=12
    ),
    to_string=st.none() | texts,
)
def test_flat_objects_equal_psrpcore(
    type_names: list[str], properties: list[tuple[str, object]], to_string: str | None
) -> None:
    names = [n for n, _ in properties]
    if len({n.casefold() for n in names}) != len(names):
        return  # PowerShell refuses two note properties of one name
    value = SimObject(tuple(type_names), tuple(properties), to_string)
    assert clixml.output_xml(value) == clixml.psrpcore_xml(clixml.to_psobject(value))
    # The second object of a shape comes from its template.
    assert clixml.output_xml(value) == clixml.psrpcore_xml(clixml.to_psobject(value))


def test_objects_with_nested_values_keep_psrpcore() -> None:
    inner = SimObject(("Inner",), (("X", 1),))
    value = SimObject(("Outer",), (("Name", "a"), ("Child", inner), ("List", [1, "b"])))
    assert clixml.output_xml(value) == clixml.psrpcore_xml(clixml.to_psobject(value))


def test_an_error_record_with_control_characters_is_well_formed_clixml() -> None:
    xml = clixml.error_xml(SimError(message="boom _x a\x1b]0;T\x07b <&>", fqid="X"))
    to_string = ElementTree.fromstring(xml).findtext("ToString")
    assert to_string == "boom _x005F_x a_x001B_]0;T_x0007_b <&>"
