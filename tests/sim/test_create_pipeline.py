"""The fast CreatePipeline reader agrees with psrpcore's deserializer, or steps aside.

Messages come from psrpcore's own client (the serializer pypsrp and our client's templates
reproduce byte for byte) over an in-memory client/server pair with a real session key, and
from hand-written CLIXML for what a client could send but psrpcore would not write. Every
event carries both readings: the commands the fast path read, and psrpcore's view of the same
bytes (``event.pipeline``), so each test compares the two directly.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any
from xml.sax.saxutils import escape

import psrpcore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psrpcore import CreatePipelineEvent, ServerPipeline
from psrpcore._crypto import PSRemotingCrypto
from psrpcore.types import PSCredential, PSSecureString
from psrpcore.types._serializer import deserialize

from vmbusops.sim.create_pipeline import (
    GuestCredentialValue,
    ParsedCreatePipelineEvent,
    SimRunspacePool,
    parse_create_pipeline,
)
from vmbusops.sim.hyperv import plain

# -- a client and the simulator's pool, in memory ------------------------------------------------


def _deliver(source: psrpcore.ClientRunspacePool | SimRunspacePool, target: Any) -> list[Any]:
    events = []
    while (payload := source.data_to_send()) is not None:
        target.receive_data(payload)
        while (event := target.next_event()) is not None:
            events.append(event)
    return events


class Pair:
    def __init__(self, *, exchange_key: bool = True) -> None:
        self.client = psrpcore.ClientRunspacePool()
        self.server = SimRunspacePool()
        self.client.open()
        _deliver(self.client, self.server)
        _deliver(self.server, self.client)
        if exchange_key:
            self.client.exchange_key()
            _deliver(self.client, self.server)
            _deliver(self.server, self.client)

    def send(self, ps: psrpcore.ClientPowerShell) -> CreatePipelineEvent:
        ServerPipeline(self.server, ps.pipeline_id)
        ps.start()
        (event,) = _deliver(self.client, self.server)
        assert isinstance(event, CreatePipelineEvent)
        return event


@pytest.fixture(scope="module")
def pair() -> Pair:
    return Pair()


Statement = list[tuple[str, bool, list[tuple[str | None, Any]]]]


def pipeline(pair: Pair, statements: list[Statement]) -> psrpcore.ClientPowerShell:
    ps = psrpcore.ClientPowerShell(pair.client)
    for i, statement in enumerate(statements):
        if i:
            ps.add_statement()
        for name, is_script, params in statement:
            if is_script:
                ps.add_script(name)
            else:
                ps.add_command(name)
            for key, value in params:
                if key is None:
                    ps.add_argument(value)
                else:
                    ps.add_parameter(key, value)
    return ps


# -- comparing the two readings ------------------------------------------------------------------


def typed(value: Any) -> Any:
    """A value with its type spelled out (True == 1 in Python; here they differ)."""
    if isinstance(value, GuestCredentialValue):
        return ("credential", value.UserName, value.Password)
    if isinstance(value, PSCredential):
        return ("credential", str(value.UserName), str(value.Password.decrypt()))
    value = plain(value)
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def reading(commands: Any) -> list[Any]:
    return [
        (
            str(c.command_text),
            c.is_script,
            c.end_of_statement,
            [(n if n is None else str(n), typed(v)) for n, v in c.parameters],
        )
        for c in commands
    ]


def assert_same_reading(event: CreatePipelineEvent) -> None:
    assert isinstance(event, ParsedCreatePipelineEvent), "the fast path stepped aside"
    assert reading(event.commands) == reading(event.pipeline.commands)


# -- strategies -----------------------------------------------------------------------------------

# Fragments that exercise XML escaping, CLIXML _xHHHH_ escapes and UTF-16 surrogate pairs.
# Not U+FFFE / U+FFFF: psrpcore writes them as character references XML forbids, so neither
# path can read its message (PowerShell writes _xFFFE_; the hand-written tests cover that).
_TRICKY = st.sampled_from(
    [
        "_x0041_", "_x005F_", "_x005f_", "_x", "_X0041_", "_x00_", "_x12345_", "x0041_", "_",
        "<", ">", "&", "&amp;", '"', "'", "]]>", "\r", "\r\n", "\n", "\t", "\x00", "\x01",
        "\x1b", "\x7f", "\x85", "\u2028", "\u5f00", "\U0001f600", " ", "\u00e9",
    ]
)  # fmt: skip
_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\ufffe\uffff"), max_size=8
)
strings = st.lists(st.one_of(_TRICKY, _TEXT), max_size=6).map("".join)
scalars = st.one_of(
    strings,
    st.booleans(),
    st.none(),
    st.integers(-(2**31), 2**31 - 1),
    # psrpcore writes any int below 2**31 as <I32>, so larger negative ones cannot be sent.
    st.integers(2**31, 2**63 - 1),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
credentials = st.builds(
    lambda user, password: PSCredential(UserName=user, Password=PSSecureString(password)), strings, strings
)
parameters = st.lists(st.tuples(st.one_of(st.none(), strings), st.one_of(values, credentials)), max_size=4)
# psrpcore writes a command's name into <ToString> without escaping it: a name with a character
# XML forbids makes a message no one can read.
names = strings.filter(lambda s: s != "" and not any(c < " " and c not in "\t\n\r" for c in s))
commands = st.tuples(names, st.booleans(), parameters)
statements = st.lists(st.lists(commands, min_size=1, max_size=3), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statements=statements)
def test_any_pipeline_of_supported_values_reads_as_psrpcore_reads_it(
    pair: Pair, statements: list[Statement]
) -> None:
    assert_same_reading(pair.send(pipeline(pair, statements)))


def test_the_agents_invoke_command_takes_the_fast_path(pair: Pair) -> None:
    cred = PSCredential(UserName="Administrator", Password=PSSecureString("Pa55-w0rd"))
    event = pair.send(
        pipeline(
            pair,
            [
                [
                    (
                        "Invoke-Command",
                        False,
                        [
                            ("VMName", "web01"),
                            ("Credential", cred),
                            ("ScriptBlock", "hostname"),
                            ("ArgumentList", ["a", 1, True, None]),
                        ],
                    )
                ]
            ],
        )
    )
    assert_same_reading(event)
    assert isinstance(event, ParsedCreatePipelineEvent)
    (command,) = event.commands
    assert command.parameters[1] == ("Credential", GuestCredentialValue("Administrator", "Pa55-w0rd"))
    assert "Pa55" not in repr(command.parameters[1][1])
    assert str(command.parameters[1][1]) == "System.Management.Automation.PSCredential"


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        {"a": 1},
        datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
        uuid.UUID(int=7),
        ("tuple", "is a custom object"),
        PSSecureString("a bare SecureString"),
    ],
    ids=["float", "hashtable", "datetime", "guid", "custom-object", "securestring"],
)
def test_other_values_step_aside_to_psrpcore(pair: Pair, value: Any) -> None:
    event = pair.send(pipeline(pair, [[("Get-VM", False, [("Name", value)])]]))
    assert not isinstance(event, ParsedCreatePipelineEvent)
    assert event.pipeline.commands[0].command_text == "Get-VM"


def test_a_credential_sent_twice_is_a_ref_and_reads_the_same(pair: Pair) -> None:
    cred = PSCredential(UserName="u", Password=PSSecureString("p"))
    assert_same_reading(pair.send(pipeline(pair, [[("Get-VM", False, [("A", cred), ("B", cred)])]])))
    # Two statements: ExtraCmds refers back to the first statement's values.
    assert_same_reading(
        pair.send(pipeline(pair, [[("Get-VM", False, [("A", cred)])], [("Stop-VM", False, [("B", cred)])]]))
    )


def test_a_credential_without_a_session_key_steps_aside() -> None:
    # The key is missing: psrpcore's path keeps the SecureString and the cmdlet reports the
    # credential as invalid, as it always did.
    keyed = Pair()
    ps = pipeline(
        keyed,
        [
            [
                (
                    "Invoke-Command",
                    False,
                    [("Credential", PSCredential(UserName="u", Password=PSSecureString("p")))],
                )
            ]
        ],
    )
    ServerPipeline(keyed.server, ps.pipeline_id)
    ps.start()
    payload = keyed.client.data_to_send()
    assert payload is not None
    unkeyed = Pair(exchange_key=False)
    ServerPipeline(unkeyed.server, ps.pipeline_id)
    unkeyed.server.receive_data(payload)
    event = unkeyed.server.next_event()
    assert isinstance(event, CreatePipelineEvent) and not isinstance(event, ParsedCreatePipelineEvent)


# -- hand-written CLIXML: what a client may send that psrpcore would not write ------------------------

_MERGE = '<Obj RefId="m" N="MergeMyResult"><I32>0</I32></Obj><Ref RefId="m" N="MergeToResult" /><Ref RefId="m" N="MergePreviousResults" />'


def _message(args: str, *, cmd: str = '<S N="Cmd">Get-VM</S>', extra: str = "") -> bytes:
    return (
        '<Obj RefId="0"><MS><B N="NoInput">true</B><Obj RefId="1" N="ApartmentState"><I32>2</I32></Obj>'
        '<Obj RefId="2" N="RemoteStreamOptions"><I32>0</I32></Obj><B N="AddToHistory">false</B>'
        '<Obj RefId="3" N="HostInfo"><MS><B N="_isHostNull">true</B><B N="_isHostUINull">true</B>'
        '<B N="_isHostRawUINull">true</B><B N="_useRunspaceHost">true</B></MS></Obj>'
        f'<Obj RefId="4" N="PowerShell"><MS><Obj RefId="5" N="Cmds"><LST><Obj RefId="6"><MS>{cmd}'
        f'<Obj RefId="7" N="Args"><LST>{args}</LST></Obj><B N="IsScript">false</B>'
        f'<Nil N="UseLocalScope" />{_MERGE}</MS></Obj></LST></Obj>{extra}'
        '<B N="IsNested">false</B><Nil N="History" /><B N="RedirectShellErrorOutputPipe">true</B></MS></Obj>'
        '<B N="IsNested">false</B></MS></Obj>'
    ).encode()


def _arg(name: str, value: str) -> str:
    return f'<Obj><MS><S N="N">{name}</S>{value}</MS></Obj>'


def _psrpcore_commands(data: bytes) -> list[Any]:
    from xml.etree import ElementTree

    cipher = PSRemotingCrypto()
    return list(
        psrpcore.PowerShell.FromPSObjectForRemoting(
            deserialize(ElementTree.fromstring(data), cipher)
        ).commands
    )


def _fast(data: bytes) -> Any:
    return parse_create_pipeline(data, lambda _: pytest.fail("no SecureString here"))


# Raw XML character data and references, not escaped again: entity and character references,
# CR (normalised by the parser), and _xHHHH_ sequences including ones that straddle characters.
_RAW = st.sampled_from(
    [
        "&amp;", "&lt;", "&#10;", "&#13;", "&#x5F;x0041_", "&#x5f00;", "_x000D__x000A_",
        "_xD83D__xDE00_", "_xD83D_", "_xFFFE_", "_x005F_x0041_", "\r\n", "\r", "_x0041", "x_x",
        "__x0041__",
    ]
)  # fmt: skip
_XML_FORBIDDEN = "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r") + "\ufffe\uffff"
_XML_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=_XML_FORBIDDEN), max_size=6
)
raw_texts = st.lists(st.one_of(_RAW, _XML_TEXT.map(escape)), max_size=8).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=raw_texts, name=raw_texts)
def test_hand_written_strings_decode_as_psrpcore_decodes_them(text: str, name: str) -> None:
    data = _message(
        _arg(name, f'<S N="V">{text}</S>') + f'<Obj><MS><Nil N="N" /><S N="V">{text}</S></MS></Obj>',
        cmd=f'<S N="Cmd">{text}x</S>',
    )
    fast = _fast(data)
    assert fast is not None
    assert reading(fast) == reading(_psrpcore_commands(data))


@pytest.mark.parametrize(
    "value",
    [
        '<U16 N="V">65535</U16>',
        '<SB N="V">-128</SB>',
        '<By N="V">255</By>',
        '<U64 N="V">18446744073709551615</U64>',
        '<I16 N="V">-32768</I16>',
        '<U32 N="V">0</U32>',
        '<B N="V">True</B>',
        '<B N="V">yes</B>',
        '<S N="V" />',
        '<Obj N="V"><TN RefId="9"><T>System.Object[]</T></TN><LST><Obj><TNRef RefId="9" /><LST /></Obj></LST></Obj>',
        '<Obj N="V"><TN RefId="9"><T>System.Object[]</T><T>System.Array</T></TN><LST /></Obj>',
    ],
)
def test_hand_written_scalars_read_as_psrpcore_reads_them(value: str) -> None:
    data = _message(f'<Obj><MS><S N="N">P</S>{value}</MS></Obj>')
    fast = _fast(data)
    assert fast is not None
    assert reading(fast) == reading(_psrpcore_commands(data))


@pytest.mark.parametrize(
    "value",
    [
        '<I32 N="V"> 5</I32>',  # psrpcore's int() takes spaces
        '<I32 N="V">+5</I32>',
        '<I32 N="V">1_0</I32>',
        '<I32 N="V">2147483648</I32>',  # out of range: psrpcore raises
        '<By N="V">256</By>',
        '<Db N="V">1.5</Db>',
        '<Ref N="V" RefId="1" />',
        '<Obj N="V"><LST /><MS><S N="x">y</S></MS></Obj>',
        '<Obj N="V"><DCT /></Obj>',
        '<Obj N="V"><TNRef RefId="0" /><LST><S>a</S></LST></Obj>',  # names no <TN>: psrpcore fails
        '<S N="V">a<B>b</B></S>',
    ],
)
def test_hand_written_values_it_does_not_read_exactly_step_aside(value: str) -> None:
    assert _fast(_message(f'<Obj><MS><S N="N">P</S>{value}</MS></Obj>')) is None


@pytest.mark.parametrize(
    ("cmd", "extra"),
    [
        ('<S N="Cmd">Get-VM</S><S N="Cmd">Stop-VM</S>', ""),  # duplicates: the last wins in both
        ('<S N="Cmd">Get-VM</S>', '<Obj N="ExtraCmds"><LST /></Obj>'),  # no statements at all
        ('<S N="Cmd">Get-VM</S>', '<Nil N="ExtraCmds" />'),
        ('<S N="C_x006D_d">Get-VM</S>', ""),  # property names are CLIXML-escaped too
    ],
)
def test_odd_structure_reads_as_psrpcore_reads_it(cmd: str, extra: str) -> None:
    data = _message("", cmd=cmd, extra=extra)
    fast = _fast(data)
    assert fast is not None
    assert reading(fast) == reading(_psrpcore_commands(data))


@pytest.mark.parametrize(
    ("args", "cmd", "extra"),
    [
        ('<Obj><MS><S N="V">x</S></MS></Obj>', '<S N="Cmd">Get-VM</S>', ""),  # no N
        ("", "", ""),  # no Cmd
        (
            "",
            '<S N="Cmd">Get-VM</S>',
            '<Obj N="ExtraCmds"><LST><Obj><MS><Nil N="Cmds" /></MS></Obj></LST></Obj>',
        ),
        (
            "",
            '<S N="Cmd">Get-VM</S>',
            '<Obj N="ExtraCmds"><LST><Obj><MS><Obj N="Cmds"><LST /></Obj></MS></Obj></LST></Obj>',
        ),
    ],
)
def test_structure_psrpcore_rejects_is_not_read(args: str, cmd: str, extra: str) -> None:
    data = _message(args, cmd=cmd, extra=extra)
    assert _fast(data) is None
    with pytest.raises((AttributeError, IndexError, TypeError)):
        _psrpcore_commands(data)


def test_a_command_name_that_is_not_a_string_steps_aside() -> None:
    assert _fast(_message("", cmd='<Obj N="Cmd"><LST /></Obj>')) is None


def test_not_xml_steps_aside() -> None:
    assert parse_create_pipeline(b"<Obj", lambda s: s) is None



# -- the same body again ---------------------------------------------------------------------------


def _sealed_credential_body(cipher: PSRemotingCrypto) -> bytes:
    credential = (
        '<Obj N="V" RefId="c"><TN RefId="t"><T>System.Management.Automation.PSCredential</T>'
        '<T>System.Object</T></TN><Props><S N="UserName">Administrator</S>'
        f'<SS N="Password">{cipher.encrypt("Pa55-w0rd")}</SS></Props></Obj>'
    )
    return _message(_arg("Credential", credential) + _arg("VMName", '<Obj N="V"><LST><S>web01</S></LST></Obj>'))


def test_a_body_read_again_is_decrypted_with_the_callers_key_each_time() -> None:
    cipher = PSRemotingCrypto()
    cipher.register_key(b"k" * 32)
    data = _sealed_credential_body(cipher)
    first = parse_create_pipeline(data, cipher.decrypt)
    assert first is not None
    # The same bytes under another key (a new pool, or a key exchanged again) do not decrypt.
    other = PSRemotingCrypto()
    other.register_key(b"o" * 32)
    assert parse_create_pipeline(data, other.decrypt) is None
    again = parse_create_pipeline(data, cipher.decrypt)
    assert again is not None
    assert again[0].parameters == [
        ("Credential", GuestCredentialValue("Administrator", "Pa55-w0rd")),
        ("VMName", ["web01"]),
    ]


def test_a_body_read_again_hands_out_new_values() -> None:
    data = _message(_arg("Name", '<Obj N="V"><LST><S>web01</S></LST></Obj>'))
    first = _fast(data)
    first[0].parameters[0][1].append("changed")
    first[0].parameters.clear()
    first[0].end_of_statement = False
    (command,) = _fast(data)
    assert command.parameters == [("Name", ["web01"])]
    assert command.end_of_statement


# -- bodies of one shape: the template of the first, the strings of each ---------------------------

non_empty = strings.filter(bool)
# The texts of one shape of pipeline: empty strings are written as a shape of their own.
shape_texts = st.tuples(non_empty, non_empty, non_empty, names)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=shape_texts, then=shape_texts)
def test_a_body_of_a_shape_read_before_reads_its_own_strings(
    pair: Pair, first: tuple[str, str, str, str], then: tuple[str, str, str, str]
) -> None:
    def invoke(texts: tuple[str, str, str, str]) -> Statement:
        vm, user, password, script = texts
        credential = PSCredential(UserName=user, Password=PSSecureString(password))
        return [
            ("Invoke-Command", False, [("VMName", [vm, "web01"]), ("Credential", credential), ("ScriptBlock", script)]),
            (script, True, [(None, vm), ("Name", user)]),
        ]

    assert_same_reading(pair.send(pipeline(pair, [invoke(first)])))
    assert_same_reading(pair.send(pipeline(pair, [invoke(then)])))


def test_bodies_that_differ_only_in_their_strings_share_one_template() -> None:
    from vmbusops.sim import create_pipeline

    create_pipeline._templates.clear()
    for name in ("web01", "db&lt;02", "x" * 600, ""):
        data = _message(_arg("VMName", f'<Obj N="V"><LST><S>{name}</S></LST></Obj>'))
        (command,) = _fast(data)
        assert command.parameters == [("VMName", [name.replace("&lt;", "<")])]
    assert len(create_pipeline._templates) == 1


@pytest.mark.parametrize(
    "text",
    [
        "&#10;", "&#13;", "a\rb", "\r\n", "&#x5F;x0041_", "&quot;&apos;&gt;", "&bogus;", "&#0;", "&", "]]>",
        "a]]>b", "]]", "\x01", "\x1f", "\t\n", "\ufffe", "\uffff", "\ufdd0", "\U0001f600", "_x000D_",
    ],
)  # fmt: skip
def test_a_leaf_the_template_cannot_vouch_for_is_read_as_the_parser_reads_it(text: str) -> None:
    def body(value: str) -> bytes:
        return _message(_arg("Name", f'<S N="V">{value}</S>') + _arg("Other", '<S N="V">same</S>'))

    assert _fast(body("plain")) is not None  # the shape's template is made
    data = body(text)
    try:
        expected = reading(_psrpcore_commands(data))
    except Exception:
        assert _fast(data) is None  # not XML to the parser: psrpcore's path says so
    else:
        fast = _fast(data)
        assert fast is not None
        assert reading(fast) == expected


def test_a_body_that_is_not_utf8_or_declares_its_encoding_is_read_as_the_parser_reads_it() -> None:
    plain = _message(_arg("Name", '<S N="V">caf\u00e9</S>'))
    assert _fast(plain) is not None
    assert _fast(plain.replace("caf\u00e9".encode(), b"caf\xe9")) is None  # not UTF-8: not XML
    declared = b'<?xml version="1.0" encoding="iso-8859-1"?>' + plain.replace("caf\u00e9".encode(), b"caf\xe9")
    fast = _fast(declared)
    assert fast is not None
    assert reading(fast) == reading(_psrpcore_commands(declared))
    assert fast[0].parameters == [("Name", "caf\u00e9")]
