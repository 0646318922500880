"""``python -m vmbusops.sim`` as a real child process: pipes, exit codes, chaos, shared state, peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from psrpcore.types import PSInvocationState
from sim_testclient import TEST_LAB, run_in_guest, sim_command, sim_process

from vmbusops.errors import FramingError
from vmbusops.psrp.transport import REFUSAL_PREFIX
from vmbusops.sim.lab import load_lab


async def test_child_serves_closes_cleanly_and_never_writes_stderr(lab_file: Path, tmp_path: Path) -> None:
    lab = load_lab(lab_file)
    async with sim_process(lab_file, tmp_path / "state") as sim:
        result = await run_in_guest(
            sim.client, lab, "web01", "Write-Verbose 'from the guest' -Verbose; Get-Service W3SVC | % Status"
        )
        assert result.output == ["Running"]
        assert result.verbose == ["from the guest"]
        await sim.client.close()
        with trio.fail_after(10):
            await sim.process.wait()
    assert sim.process.returncode == 0
    assert bytes(sim.stderr) == b""


async def test_child_exits_cleanly_when_stdin_ends(lab_file: Path, tmp_path: Path) -> None:
    async with sim_process(lab_file, tmp_path / "state") as sim:
        assert sim.process.stdin is not None
        await sim.process.stdin.aclose()
        with trio.fail_after(10):
            await sim.process.wait()
    assert sim.process.returncode == 0
    assert bytes(sim.stderr) == b""


async def test_state_is_shared_between_processes(lab_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with sim_process(lab_file, state) as first:
        stopped = await first.client.run("Stop-VM", Name="web01", Force=True)
        assert stopped.state == PSInvocationState.Completed
        await first.client.close()
    async with sim_process(lab_file, state) as second:
        seen = await second.client.run("Get-VM", Name="web01")
        assert seen.output[0].State == "Off"
        await second.client.close()


async def test_log_file_only_when_asked_and_never_the_password(lab_file: Path, tmp_path: Path) -> None:
    lab = load_lab(lab_file)
    log = tmp_path / "sim.log"
    password = lab.credential("web01")[1]
    async with sim_process(lab_file, tmp_path / "state", env={"VMBUSOPS_SIM_LOG": str(log)}) as sim:
        await run_in_guest(sim.client, lab, "web01", "'x'")
        await sim.client.close()
    text = log.read_text(encoding="utf-8")
    assert "Invoke-VmbusOpsGuest (script)" in text
    assert password not in text
    assert bytes(sim.stderr) == b""


def _chaos_lab(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "chaos.toml"
    path.write_text(TEST_LAB.replace('password_seed = "test-seed"', f'password_seed = "test-seed"\n{line}'))
    return path


async def test_crash_on_exits_abruptly_when_the_cmdlet_starts(tmp_path: Path) -> None:
    lab_file = _chaos_lab(tmp_path, 'crash_on = "Copy-VMFile"')
    async with sim_process(lab_file, tmp_path / "state") as sim:
        listed = await sim.client.run("Get-VM", Name="web01")
        assert len(listed.output) == 1
        ps = await sim.client.start(
            "Copy-VMFile", Name="web01", SourcePath=str(lab_file), DestinationPath="C:\\x", FileSource="Host"
        )
        with trio.fail_after(10):
            await sim.process.wait()
        assert sim.process.returncode not in (0, None)
        assert not sim.client.finished(ps)


async def test_garbage_on_writes_non_protocol_bytes(tmp_path: Path) -> None:
    lab_file = _chaos_lab(tmp_path, 'garbage_on = "Get-VM"')
    async with sim_process(lab_file, tmp_path / "state") as sim:
        await sim.client.start("Get-VM")
        with trio.fail_after(10):
            await sim.client.wait_eof()
        assert isinstance(sim.client.reader_error, FramingError)
        assert "not an OutOfProc packet" in str(sim.client.reader_error)


def test_bad_lab_exits_2_with_one_refusal_line_and_no_packet(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[vm]]\nname = 'a'\nstate = 'Sleeping'\n")
    proc = subprocess.run(
        sim_command(bad, tmp_path / "state"),
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    # The one line a client turns into the lab parser's own usage error (ProcessTransport).
    prefix, _, said = proc.stderr.decode().partition(REFUSAL_PREFIX)
    assert prefix == "" and said.endswith("\n") and "\n" not in said[:-1], proc.stderr
    assert "state must be one of" in json.loads(said)["message"]


PEER_SCRIPT = r"""
import asyncio, sys
import psrp
from psrpcore.types import PSCredential, PSSecureString

async def main(python, state, lab, password, invoker_path):
    invoker = open(invoker_path, encoding="utf-8").read()
    conn = psrp.ProcessInfo(python, ["-m", "vmbusops.sim", "--state-dir", state, "--lab", lab])

    def guest(rp, script, secret):
        ps = psrp.AsyncPowerShell(rp)
        ps.add_script(invoker)
        ps.add_parameters(
            VMName="web01",
            Credential=PSCredential(UserName="Administrator", Password=PSSecureString(secret)),
            Script=[script],
            StepIndex=[0],
            RunId="peer-1",
        )
        return ps

    # pypsrp declares no host unless given one: the guest's verbose records are dropped.
    async with psrp.AsyncRunspacePool(conn) as rp:
        ps = psrp.AsyncPowerShell(rp)
        ps.add_command("Get-VM")
        print("VMS", ",".join(str(o.Name) for o in await ps.invoke()))
        ps = guest(rp, "1..3 | % { Write-Verbose \"v$_\" -Verbose; \"o$_\" }", password)
        out = await ps.invoke()
        print("OUT", ",".join(str(o) for o in out))
        print("NOHOST-VERBOSE", ",".join(str(v.Message) for v in ps.streams.verbose))
        print("MARKERS", ",".join(str(i.MessageData) for i in ps.streams.information))
        ps = guest(rp, "1", "wrong")
        await ps.invoke()
        print("ERROR", ps.streams.error[0])
    async with psrp.AsyncRunspacePool(conn, host=psrp.PSHost(ui=psrp.PSHostUI())) as rp:
        ps = guest(rp, "1..3 | % { Write-Verbose \"v$_\" -Verbose; \"o$_\" }", password)
        await ps.invoke()
        print("VERBOSE", ",".join(str(v.Message) for v in ps.streams.verbose))

asyncio.run(main(*sys.argv[1:]))
"""


def _peer_python() -> str | None:
    configured = os.environ.get("VMBUSOPS_PEER_PYTHON")
    if configured:
        return configured
    candidate = Path(__file__).resolve().parents[2] / ".venv-peer" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


@pytest.mark.peer
def test_pypsrp_talks_to_the_simulator(lab_file: Path, tmp_path: Path) -> None:
    peer = _peer_python()
    if peer is None:
        pytest.fail("the independent PSRP peer (.venv-peer) is not installed; ./scripts/test bootstraps it")
    script = tmp_path / "peer.py"
    script.write_text(PEER_SCRIPT)
    lab = load_lab(lab_file)
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run(
        [
            peer,
            str(script),
            sys.executable,
            str(tmp_path / "state"),
            str(lab_file),
            lab.credential("web01")[1],
            str(
                Path(__file__).resolve().parents[2]
                / "src/vmbusops/guestops/powershell/Invoke-VmbusOpsGuest.ps1"
            ),
        ],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "VMS web01,db01,legacy01,app01,flaky01" in out
    assert "OUT o1,o2,o3" in out
    assert "MARKERS vmbusops-step begin 0,vmbusops-step end 0 exit=0" in out
    assert "NOHOST-VERBOSE \n" in out
    assert "VERBOSE v1,v2,v3" in out
    assert "ERROR The credential is invalid." in out
