"""PSRP over SSH against a real OpenSSH server: trust, authentication, loss of the connection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from sshd import Sshd

from vmbusops.errors import HostAuthError, HostKeyError, HostProcessExitedError, TransportError
from vmbusops.guestops.remote import open_ssh_host
from vmbusops.psrp.ssh import SshChannelTransport, parse_ssh_url, parse_user_host
from vmbusops.records import OutputRecord, PipelineStateRecord


def test_ssh_addresses() -> None:
    target = parse_ssh_url("ssh://svc@hv01.example.net:2222")
    assert (target.username, target.host, target.port, target.subsystem) == ("svc", "hv01.example.net", 2222, "powershell")
    assert parse_ssh_url("ssh://hv01").port == 22
    assert parse_user_host("svc@[::1]:2200").host == "::1"
    for bad in ("ssh://user:secret@hv01", "ssh://hv01/path", "http://hv01", "ssh://hv01:99999"):
        with pytest.raises(Exception, match=r"SSH|port|password"):
            parse_ssh_url(bad)


async def test_lists_vms_over_the_powershell_subsystem(sshd: Sshd, make_lab: Callable[..., Any]) -> None:
    sshd.use_lab(make_lab().path)
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        assert isinstance(host.pool._transport, SshChannelTransport)  # type: ignore[attr-defined]
        assert host.pool.description.startswith(f"ssh://{sshd.username}@127.0.0.1:{sshd.port}")
        names = {vm.name for vm in await host.list_vms()}
        assert len(sshd.session_pids()) == 1
    assert "web01" in names


def _fingerprint(public_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(public_key)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def _new_public_key(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text()


async def test_an_unknown_host_key_is_refused_with_how_to_trust_it(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as info:
        async with open_ssh_host(sshd.target(known_hosts=str(empty))):
            pass
    text = str(info.value)
    fingerprint = _fingerprint(sshd.directory / "ssh_host_ed25519_key.pub")
    assert "not trusted" in text and fingerprint in text
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in text
    assert not info.value.transient


async def test_a_changed_host_key_is_refused_as_a_possible_attack(sshd: Sshd, tmp_path: Path) -> None:
    other = _new_public_key(tmp_path / "other_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other}")
    with pytest.raises(HostKeyError, match="CHANGED"):
        async with open_ssh_host(sshd.target(known_hosts=str(known))):
            pass
    # A pinned key is trusted alone, whatever known_hosts says.
    with pytest.raises(HostKeyError, match="CHANGED"):
        async with open_ssh_host(sshd.target(host_key=other)):
            pass


async def test_a_pinned_host_key_is_enough(sshd: Sshd, tmp_path: Path, make_lab: Callable[..., Any]) -> None:
    sshd.use_lab(make_lab().path)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    async with open_ssh_host(sshd.target(known_hosts=str(empty), host_key=sshd.host_public_key)) as host:
        assert await host.get_vm("web01")


async def test_a_refused_login_is_not_retried_and_shows_no_secret(sshd: Sshd) -> None:
    with pytest.raises(HostAuthError, match="refused the login") as info:
        async with open_ssh_host(sshd.target(client_keys=(str(sshd.stranger_key),))):
            pass
    assert not info.value.transient
    private = sshd.stranger_key.read_text()
    body = "".join(private.splitlines()[1:-1])
    assert body[:40] not in str(info.value)


@pytest.fixture
def ssh_agent(sshd: Sshd, tmp_path: Path) -> Iterator[Path]:
    """OpenSSH's ssh-agent holding the client key, on a private socket."""
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        for _ in range(200):
            if subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, stderr=subprocess.DEVNULL, check=False).returncode == 0:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        else:
            pytest.fail("ssh-agent did not start")
        yield socket_path
    finally:
        agent.terminate()
        agent.wait()


async def test_agent_based_authentication(
    sshd: Sshd, ssh_agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_lab: Callable[..., Any]
) -> None:
    sshd.use_lab(make_lab().path)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(ssh_agent))
    monkeypatch.setenv("HOME", str(tmp_path))  # no default key files: only the agent can log in
    async with open_ssh_host(sshd.target(client_keys=(), use_agent=True)) as host:
        assert await host.get_vm("web01")
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(HostAuthError):
        async with open_ssh_host(sshd.target(client_keys=(), use_agent=True)):
            pass


async def test_losing_the_connection_mid_stream_is_a_transient_error(
    sshd: Sshd, make_lab: Callable[..., Any]
) -> None:
    lab = make_lab()
    sshd.use_lab(lab.path)
    script = "1..100000 | ForEach-Object { Write-Output $_; Start-Sleep -Milliseconds 5 }"
    seen: list[object] = []
    killed: list[int] = []

    async def stream(host: Any) -> None:
        async with host.invoke_in_guest("web01", script, lab.credential()) as inv:
            async for rec in inv:
                seen.append(rec.record)
                if len(seen) == 20:
                    killed.append(sshd.kill_sessions())

    with trio.fail_after(30):
        async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
            with pytest.raises(HostProcessExitedError) as info:
                await stream(host)
            assert killed and killed[0] >= 1
            with pytest.raises(TransportError):
                await host.list_vms()
    assert info.value.transient
    assert 20 <= len(seen) < 1000
    assert not any(isinstance(r, PipelineStateRecord) for r in seen)
    assert all(isinstance(r, OutputRecord) for r in seen)
    # The engine's retry opens a new connection, and that works.
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        records, outcome = await host.run_in_guest("web01", "Write-Output 'again'", lab.credential())
        assert outcome.ok
        assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["again"]


async def test_a_host_without_the_subsystem_is_explained(sshd: Sshd) -> None:
    with pytest.raises(TransportError, match="refused to open the 'nosuch' subsystem") as info:
        async with open_ssh_host(sshd.target(subsystem="nosuch")):
            pass
    assert "Subsystem powershell" in str(info.value)


async def test_nothing_listening_is_a_transient_transport_error(sshd: Sshd) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach") as info:
        async with open_ssh_host(sshd.target(port=port)):
            pass
    assert info.value.transient
