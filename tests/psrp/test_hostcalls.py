"""The host-call table and the echo rule, without a server (the real server: test_real_pwsh.py)."""

from __future__ import annotations

import pytest
from psrpcore.types import ConsoleColor
from psrpcore.types import HostMethodIdentifier as Method

from vmbusops.psrp.hostcalls import EchoFilter, HostCallAction, action_of, record_from_host_call, refusal
from vmbusops.records import (
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    VerboseRecord,
    WarningRecord,
    display_text,
)


def test_every_host_method_has_an_action() -> None:
    actions = {m: action_of(m) for m in Method}
    assert actions[Method.SetShouldExit] is HostCallAction.EXIT_CODE
    for asks in (Method.ReadLine, Method.ReadLineAsSecureString, Method.Prompt, Method.PromptForChoice,
                 Method.PromptForCredential1, Method.PromptForCredential2, Method.ReadKey):
        assert actions[asks] is HostCallAction.REFUSE
        assert "no one is there to answer" in refusal(asks)
    for writes in (Method.WriteVerboseLine, Method.WriteLine3, Method.WriteProgress, Method.WriteErrorLine):
        assert actions[writes] is HostCallAction.RECORD
    # A call is never both void and refused: a void call has no one waiting for an answer.
    assert all((a is HostCallAction.REFUSE) != m.is_void() for m, a in actions.items())


@pytest.mark.parametrize(
    ("method", "params", "shown"),
    [
        (Method.WriteLine3, [ConsoleColor.Gray, ConsoleColor.Black, "hi"], "hi"),
        (Method.WriteLine2, ["plain"], "plain"),
        (Method.Write1, ["no newline"], "no newline"),
        (Method.WriteLine1, [], ""),
        (Method.WriteErrorLine, ["stderr line"], "stderr line"),
        (Method.WriteWarningLine, ["careful"], "careful"),
    ],
)
def test_write_calls_become_records_shown_as_their_text(method: Method, params: list[object], shown: str) -> None:
    record = record_from_host_call(method, params)
    assert record is not None
    assert display_text(record) == shown


def test_a_call_echoes_only_the_record_right_before_it() -> None:
    echoes = EchoFilter()
    echoes.saw_record(VerboseRecord(message="v"))
    assert echoes.is_echo(VerboseRecord(message="v"))
    # The same text again, with no record before it, is a line of its own ($Host.UI.WriteVerboseLine).
    assert not echoes.is_echo(VerboseRecord(message="v"))
    echoes.saw_record(VerboseRecord(message="v"))
    echoes.saw_record(OutputRecord(value="o"))
    assert not echoes.is_echo(VerboseRecord(message="v"))
    echoes.saw_record(WarningRecord(message="v"))
    assert not echoes.is_echo(VerboseRecord(message="v"))
    # Write-Host: an information record tagged PSHOST, then WriteLine3 with its text.
    host_line = record_from_host_call(Method.WriteLine3, [ConsoleColor.Gray, ConsoleColor.Black, "hi"])
    assert isinstance(host_line, InformationRecord)
    echoes.saw_record(host_line)
    assert echoes.is_echo(record_from_host_call(Method.WriteLine3, [ConsoleColor.Red, ConsoleColor.Black, "hi"]))
    # Write-Information -InformationAction Continue: the record, then a host line with its text.
    echoes.saw_record(InformationRecord(message_data="hi", tags=("t",)))
    assert echoes.is_echo(host_line)
    echoes.saw_record(InformationRecord(message_data="other", tags=("t",)))
    assert not echoes.is_echo(host_line)
    echoes.saw_record(ErrorRecord(message="e"))
    assert not echoes.is_echo(ErrorRecord(message="e"))  # WriteErrorLine never echoes Write-Error
