"""PSRP over WinRM (pypsrp's WS-Management) against a WS-Management double over the simulator.

The double (wsman_double.py) authenticates with SPNEGO/NTLM and speaks WinRM message encryption
on plain HTTP; behind it, the real simulator serves PSRP. Nothing of the client is replaced.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from wsman_double import WSManDouble

from vmbusops.credentials import Secret
from vmbusops.errors import HostAuthError, TransportError
from vmbusops.guestops.remote_winrm import open_winrm_target
from vmbusops.psrp.winrm import WinRMTarget, parse_winrm_address
from vmbusops.records import OutputRecord, PipelineState, PipelineStateRecord, VerboseRecord, WarningRecord

USER = "svc-vmbusops"
PASSWORD = "C0rrect-Horse-Battery"


@pytest.fixture
def wsman(tmp_path: Path, make_lab: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[WSManDouble]:
    lab = make_lab()
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)
    double = WSManDouble(tmp_path, users={USER: PASSWORD}, lab=lab.path).start()
    try:
        yield double
    finally:
        double.stop()


def _target(double: WSManDouble, **changes: Any) -> WinRMTarget:
    base = WinRMTarget(
        host="127.0.0.1", port=double.port, ssl=False, auth="ntlm", username=USER, password=Secret(PASSWORD),
        encryption="always", connect_timeout=10,
    )
    from dataclasses import replace

    return replace(base, **changes)


def test_addresses() -> None:
    assert parse_winrm_address("hv01").url == "https://hv01:5986/wsman"
    assert parse_winrm_address("winrm://hv01:5999").url == "https://hv01:5999/wsman"
    assert parse_winrm_address("http://hv01/wsman").url == "http://hv01:5985/wsman"
    assert parse_winrm_address("hv01").cert_validation is True
    with pytest.raises(Exception, match="no user or password"):
        parse_winrm_address("https://admin:pw@hv01")
    assert PASSWORD not in repr(_target_for_repr())


def _target_for_repr() -> WinRMTarget:
    return WinRMTarget(host="hv01", username="u", password=Secret(PASSWORD))


async def test_host_operations_and_live_records_over_encrypted_winrm(
    wsman: WSManDouble, make_lab: Callable[..., Any]
) -> None:
    lab = make_lab()
    cred = lab.credential()
    script = "Write-Verbose 'v' -Verbose; Write-Output 'first'; Start-Sleep -Milliseconds 700; Write-Warning 'w'; Write-Output 'second'"
    arrivals: list[tuple[float, object]] = []
    with trio.fail_after(60):
        async with open_winrm_target(_target(wsman)) as host:
            vms = {vm.name: vm for vm in await host.list_vms()}
            assert vms["web01"].running and vms["app01"].guest_services is False
            async with host.invoke_in_guest("web01", script, cred) as inv:
                async for rec in inv:
                    arrivals.append((trio.current_time(), rec.record))
            await host.stop_vm("web02")
            assert (await host.get_vm("web02")).state == "Off"
    records = [r for _, r in arrivals]
    assert [r.value for r in records if isinstance(r, OutputRecord)] == ["first", "second"]
    assert any(isinstance(r, VerboseRecord) and r.message == "v" for r in records)
    assert any(isinstance(r, WarningRecord) and r.message == "w" for r in records)
    assert records[-1] == PipelineStateRecord(state=PipelineState.COMPLETED, exit_code=0)
    first = next(t for t, r in arrivals if isinstance(r, OutputRecord))
    assert arrivals[-1][0] - first >= 0.5, "records were held back until the pipeline ended"
    # Every SOAP message crossed the wire encrypted; neither the password nor a command is visible.
    assert wsman.requests and all(encrypted for _, encrypted in wsman.requests)
    raw = bytes(wsman.raw)
    for secret in (PASSWORD.encode(), PASSWORD.encode("utf-16-le"), b"Get-VM", b"Invoke-Command",
                   base64.b64encode(b"Get-VM")):
        assert secret not in raw
    assert not wsman.shells, "the shell was deleted when the host was closed"


async def test_a_cancelled_pipeline_is_stopped_on_the_host(wsman: WSManDouble, make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    with trio.fail_after(60):
        async with open_winrm_target(_target(wsman)) as host:
            with trio.move_on_after(1.0) as scope:
                async with host.invoke_in_guest("web01", "Start-Sleep -Seconds 60", lab.credential()) as inv:
                    async for _ in inv:
                        pass
            assert scope.cancelled_caught
            assert inv._pipe.final is not None and inv._pipe.final.state is PipelineState.STOPPED
            records, outcome = await host.run_in_guest("web01", "Write-Output 'still fine'", lab.credential())
            assert outcome.ok
            assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["still fine"]


async def test_a_failed_login_is_an_auth_error_without_the_password(wsman: WSManDouble) -> None:
    wrong = "Wr0ng-Passw0rd!"
    with trio.fail_after(30), pytest.raises(HostAuthError) as info:
        async with open_winrm_target(_target(wsman, password=Secret(wrong))):
            pass
    assert not info.value.transient
    assert wrong not in str(info.value) and PASSWORD not in str(info.value)
    assert wsman.failed_logins >= 1
    assert not wsman.shells


async def test_https_validates_the_certificate_by_default(wsman: WSManDouble) -> None:
    # The double speaks plain HTTP; an HTTPS client must refuse to go on, never fall back.
    with trio.fail_after(30), pytest.raises(TransportError):
        async with open_winrm_target(_target(wsman, ssl=True)):
            pass
    assert not wsman.requests


async def test_an_inventory_host_over_winrm(wsman: WSManDouble, vmbusops_home: Path, tmp_path: Path) -> None:
    from vmbusops.config import load_config
    from vmbusops.credentials import CredentialStore
    from vmbusops.guestops.connect import open_host

    CredentialStore().set("hv-winrm-svc", USER, Secret(PASSWORD))
    config_file = vmbusops_home / "config.toml"
    config_file.write_text(
        f'[hosts.hv-winrm]\ntransport = "winrm"\naddress = "http://127.0.0.1:{wsman.port}/wsman"\n'
        'credential = "hv-winrm-svc"\nauth = "ntlm"\nencryption = "always"\n'
        f'staging_dir = "{(tmp_path / "staging").as_posix()}"\n',
        encoding="utf-8",
    )
    (tmp_path / "staging").mkdir()
    src = tmp_path / "a.txt"
    src.write_text("x", encoding="utf-8")
    with trio.fail_after(60):
        async with open_host("hv-winrm", config=load_config(config_file)) as host:
            assert "web01" in {vm.name for vm in await host.list_vms()}
            # Staged over WinRM on demand, then Copy-VMFile'd from the host's disk.
            await host.copy_to_guest("web01", str(src), "C:\\a.txt")
            assert [p.name for p in (tmp_path / "staging").rglob("*") if p.is_file()] == ["00001_a.txt"]
    assert list((tmp_path / "staging").iterdir()) == []
    assert wsman.requests and all(encrypted for _, encrypted in wsman.requests)


async def test_staging_over_winrm_in_chunks_verified_and_removed(wsman: WSManDouble, tmp_path: Path) -> None:
    import hashlib
    import os

    from vmbusops.guestops.staging import PSRP_CHUNK, StageFile, StagingError, stage_files

    root = tmp_path / "staging"
    root.mkdir()
    big = tmp_path / "payload.bin"
    big.write_bytes(os.urandom(2 * PSRP_CHUNK + 3))  # three chunks, the last one 3 bytes
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with trio.fail_after(60):
        async with open_winrm_target(_target(wsman), staging_root=str(root)) as host:
            async with stage_files(host, [big, empty], job="77") as paths:
                assert [await trio.Path(p).read_bytes() for p in paths] == [await trio.Path(big).read_bytes(), b""]
                assert Path(paths[0]).parent.name.startswith("job-77-")
            assert list(root.iterdir()) == []
            wrong = hashlib.sha256(b"other").hexdigest()
            with pytest.raises(StagingError, match="is not what was sent"):
                async with stage_files(host, [StageFile(empty, sha256=wrong)], job="78"):
                    pytest.fail("the block must not run")
            assert list(root.iterdir()) == []
    assert wsman.requests and all(encrypted for _, encrypted in wsman.requests)
