"""The template encoder gives exactly psrpcore's bytes for every CreatePipeline it handles."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

import psrpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psrpcore.types import PSCredential, PSSecureString, PSString

from vmbusops.psrp.client import Command
from vmbusops.psrp.encode import CreatePipelineEncoder, add_statements
from vmbusops.psrp.psrpcore_private import session_cipher


def keyed_pool() -> psrpcore.ClientRunspacePool:
    pool = psrpcore.ClientRunspacePool()
    session_cipher(pool).register_key(bytes(range(32)))
    return pool


def psrpcore_bytes(pool: psrpcore.ClientRunspacePool, statements: list[list[Command]]) -> bytes:
    ps = psrpcore.ClientPowerShell(pool)
    add_statements(ps, statements)
    element = psrpcore.types.serialize(
        ps.metadata, session_cipher(pool), our_capability=pool.our_capability, their_capability=pool.their_capability
    )
    pool.pipeline_table.pop(ps.pipeline_id, None)
    return ElementTree.tostring(element, encoding="utf-8", method="xml")


def invoke(vm: str, user: str, password: str, script: str, args: list[Any]) -> list[list[Command]]:
    params: dict[str, Any] = {
        "VMName": vm,
        "Credential": PSCredential(UserName=user, Password=PSSecureString(password)),
        "ScriptBlock": script,
    }
    if args:
        params["ArgumentList"] = args
    return [[Command("Invoke-Command", params)]]


text = st.text(max_size=60)


@settings(max_examples=150, deadline=None)
@given(vm=text, user=text, password=text, script=text, args=st.lists(st.one_of(text, st.integers(-5, 5)), max_size=3))
def test_invoke_command_bytes_equal_psrpcore(vm: str, user: str, password: str, script: str, args: list[Any]) -> None:
    pool = keyed_pool()
    encoder = CreatePipelineEncoder(pool)
    for _ in range(2):  # the first builds the template, the second fills it
        statements = invoke(vm, user, password, script, args)
        encoded = encoder.encode(statements)
        if user:
            assert encoded == psrpcore_bytes(pool, statements)
        else:  # an empty user name is left to psrpcore
            assert encoded is None


@pytest.mark.parametrize(
    "statements",
    [
        [[Command("Get-VM")]],
        [[Command("Get-VM", {"Name": ["web01", "db&<01>"]})]],
        [[Command("Get-VM")], [Command("Get-VMIntegrationService", {"VMName": "*", "Name": "Guest Service Interface"})]],
        [[Command("Copy-VMFile", {"Name": "x", "SourcePath": "C:\\a b\\_x0041_.txt", "DestinationPath": "D:\\t",
                                  "FileSource": "Host", "CreateFullPath": True, "Force": True})]],
        [[Command("Stop-VM", {"Name": "x", "Force": True, "TurnOff": False, "Timeout": None})]],
        [[Command("Get-VM", {}, ["positional", 7])]],
    ],
)
def test_host_command_shapes_equal_psrpcore(statements: list[list[Command]]) -> None:
    pool = keyed_pool()
    encoder = CreatePipelineEncoder(pool)
    assert encoder.encode(statements) == psrpcore_bytes(pool, statements)
    assert encoder.encode(statements) == psrpcore_bytes(pool, statements)


@pytest.mark.parametrize(
    "value",
    [PSString("typed"), 2**40, 1.5, {"a": 1}, b"bytes"],
)
def test_values_it_cannot_carry_exactly_fall_back(value: Any) -> None:
    encoder = CreatePipelineEncoder(keyed_pool())
    assert encoder.encode([[Command("Get-VM", {"X": value})]]) is None


def test_no_trailing_empty_statement() -> None:
    pool = keyed_pool()
    body = psrpcore_bytes(pool, [[Command("Get-VM")]])
    assert b"ExtraCmds" not in body
    two = psrpcore_bytes(pool, [[Command("Get-VM")], [Command("Start-VM", {"Name": "a"})]])
    empty_statement = b'N="Cmds"><TNRef RefId="3" /><LST />'
    assert empty_statement not in two, "an empty statement was serialized"
    # What the check guards against: a boundary after the last statement.
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_command("Get-VM").add_statement().add_command("Start-VM").add_statement()
    trailing = psrpcore.types.serialize(ps.metadata, session_cipher(pool), our_capability=pool.our_capability)
    assert empty_statement in ElementTree.tostring(trailing, encoding="utf-8")


@settings(max_examples=100, deadline=None)
@given(user=text.filter(bool), password=text, script=text)
def test_guest_credential_encodes_as_the_equivalent_pscredential(user: str, password: str, script: str) -> None:
    from vmbusops.credentials import GuestCredential, Secret

    pool = keyed_pool()
    encoder = CreatePipelineEncoder(pool)
    ours = [[Command("Invoke-Command", {"VMName": "v", "Credential": GuestCredential(user, Secret(password)),
                                        "ScriptBlock": script})]]
    for _ in range(2):
        assert encoder.encode(ours) == psrpcore_bytes(pool, invoke("v", user, password, script, []))


# -- script commands (PSRP IsScript) ---------------------------------------------------------------

scripts = st.text(min_size=1, max_size=200).filter(lambda s: bool(s.strip()))


@settings(max_examples=100, deadline=None)
@given(
    body=scripts,
    name=text,
    number=st.integers(-(2**31), 2**31 - 1),
    many=st.lists(text, max_size=4),
    indices=st.lists(st.integers(0, 50), max_size=4),
    user=text.filter(bool),
    password=text,
)
def test_script_command_with_parameters_bytes_equal_psrpcore(
    body: str, name: str, number: int, many: list[str], indices: list[int], user: str, password: str
) -> None:
    pool = keyed_pool()
    encoder = CreatePipelineEncoder(pool)
    params: dict[str, Any] = {
        "Name": name,
        "Number": number,
        "Many": many,
        "Indices": indices,
        "Credential": PSCredential(UserName=user, Password=PSSecureString(password)),
    }
    statements = [[Command(body, params, [name], is_script=True)], [Command("Get-VM", {"Name": name})]]
    for _ in range(2):
        encoded = encoder.encode(statements)
        assert encoded is not None, "a script command fell back to psrpcore"
        assert encoded == psrpcore_bytes(pool, statements)


@settings(max_examples=50, deadline=None)
@given(
    steps=st.lists(text, min_size=1, max_size=3),
    vm=text.filter(bool),
    user=text.filter(bool),
    password=text,
    args=st.lists(st.one_of(text, st.integers(-5, 5)), max_size=3),
    by_id=st.booleans(),
)
def test_the_guest_invoker_templates(
    steps: list[str], vm: str, user: str, password: str, args: list[Any], by_id: bool
) -> None:
    from vmbusops.credentials import GuestCredential, Secret
    from vmbusops.guestops.invoker import INVOKER_SCRIPT, invoker_command

    pool = keyed_pool()
    encoder = CreatePipelineEncoder(pool)
    for round_ in range(2):
        command = invoker_command(
            vm=vm,
            vm_id="6e0c2a3b-1111-2222-3333-444455556666" if by_id else None,
            steps=list(enumerate(steps)),
            credential=GuestCredential(user, Secret(password)),
            arguments=args if len(steps) == 1 else (),
            run_id=f"run{round_}",
        )
        assert command.is_script and command.name == INVOKER_SCRIPT
        encoded = encoder.encode([[command]])
        assert encoded is not None, "the guest invoker fell back to psrpcore"
        as_pscredential = Command(
            command.name,
            {**command.parameters, "Credential": PSCredential(UserName=user, Password=PSSecureString(password))},
            is_script=True,
        )
        assert encoded == psrpcore_bytes(pool, [[as_pscredential]])
