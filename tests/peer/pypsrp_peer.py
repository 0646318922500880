"""An independent PSRP client against the simulator: pypsrp 1.0.0b1's process client.

Runs under the peer's own interpreter (.venv-peer, see scripts/_bootstrap.sh), never ours: it
shares no code with vmbusops, so what it proves about the simulator's PSRP is independent.

    python pypsrp_peer.py SIM_PYTHON smoke SOURCE_FILE USER
    python pypsrp_peer.py SIM_PYTHON pipelines N           # N sequential pipelines on a warm pool
    python pypsrp_peer.py SIM_PYTHON records N VM USER     # stream N verbose records from a guest

The guest password comes from the environment (VMBUSOPS_PEER_PASSWORD), never the command
line. Prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from psrpcore.types import PSCredential, PSSecureString

from psrp import AsyncPowerShell, AsyncRunspacePool, ProcessInfo, PSHost, PSHostUI

# The guest invoker as a file, read as text: the peer runs guests the way PowerShell requires (a
# script command that builds the ScriptBlock on the server), without importing vmbusops.
INVOKER = (
    Path(__file__).resolve().parents[2] / "src" / "vmbusops" / "guestops" / "powershell" / "Invoke-VmbusOpsGuest.ps1"
)


def sim_info(python: str) -> ProcessInfo:
    return ProcessInfo(executable=python, arguments=["-m", "vmbusops.sim"])


def credential(user: str, password: str) -> PSCredential:
    return PSCredential(UserName=user, Password=PSSecureString(password))


class _QuietUI(PSHostUI):
    """PowerShell follows a verbose, warning, debug or progress record with the matching host
    call; the records already carry the text, so the calls are taken and dropped."""

    def write_verbose_line(self, line: str) -> None:
        pass

    def write_warning_line(self, line: str) -> None:
        pass

    def write_debug_line(self, line: str) -> None:
        pass

    def write_progress(self, *args: object, **kwargs: object) -> None:
        pass


def with_ui() -> PSHost:
    """A host with a UI: without one, PowerShell drops a guest's verbose and warning records."""
    return PSHost(ui=_QuietUI())


def in_guest(pool: AsyncRunspacePool, vm: str, cred: PSCredential, script: str, arguments: list[str]) -> AsyncPowerShell:
    ps = AsyncPowerShell(pool)
    ps.add_script(INVOKER.read_text(encoding="utf-8"))
    ps.add_parameters(VMName=vm, Credential=cred, Script=[script], StepIndex=[0], RunId="peer-1")
    if arguments:
        ps.add_parameter("ArgumentList", arguments)
    return ps


async def smoke(python: str, source: str, user: str, password: str) -> dict[str, object]:
    out: dict[str, object] = {}
    async with AsyncRunspacePool(sim_info(python), host=with_ui()) as pool:
        ps = AsyncPowerShell(pool)
        ps.add_command("Get-VM")
        vms = await ps.invoke()
        out["vms"] = [str(vm.Name) for vm in vms]
        out["states"] = {str(vm.Name): str(vm.State) for vm in vms}

        ps = AsyncPowerShell(pool)
        ps.add_command("Copy-VMFile").add_parameters(
            Name="web01", SourcePath=source, DestinationPath="C:\\Temp\\peer.txt",
            FileSource="Host", CreateFullPath=True, Force=True,
        )
        await ps.invoke()
        out["copy_errors"] = [str(e) for e in ps.streams.error]

        ps = in_guest(
            pool,
            "web01",
            credential(user, password),
            "Write-Verbose 'from the peer' -Verbose; Get-Content 'C:\\Temp\\peer.txt'; Write-Output $args[0]",
            ["arg-one"],
        )
        result = await ps.invoke()
        out["invoke_output"] = [str(v) for v in result]
        out["invoke_verbose"] = [str(v.Message) for v in ps.streams.verbose]
        out["invoke_errors"] = [str(e) for e in ps.streams.error]
    return out


async def pipelines(python: str, count: int) -> dict[str, object]:
    async with AsyncRunspacePool(sim_info(python)) as pool:
        ps = AsyncPowerShell(pool)
        ps.add_command("Get-VM").add_parameter("Name", "web01")
        await ps.invoke()  # warm
        start = time.perf_counter()
        for _ in range(count):
            ps = AsyncPowerShell(pool)
            ps.add_command("Get-VM").add_parameter("Name", "web01")
            await ps.invoke()
        elapsed = time.perf_counter() - start
    return {"pipelines": count, "seconds": elapsed}


async def records(python: str, count: int, vm: str, user: str, password: str) -> dict[str, object]:
    async with AsyncRunspacePool(sim_info(python), host=with_ui()) as pool:
        script = f"1..{count} | ForEach-Object {{ Write-Verbose \"LCM:  [ Start  Set      ]  [[File]f$_]\" -Verbose }}"
        ps = in_guest(pool, vm, credential(user, password), script, [])
        start = time.perf_counter()
        await ps.invoke()
        elapsed = time.perf_counter() - start
        got = len(ps.streams.verbose)
    return {"records": got, "seconds": elapsed}


def main() -> None:
    python, what = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    if what == "smoke":
        result = asyncio.run(smoke(python, rest[0], rest[1], os.environ["VMBUSOPS_PEER_PASSWORD"]))
    elif what == "pipelines":
        result = asyncio.run(pipelines(python, int(rest[0])))
    elif what == "records":
        result = asyncio.run(records(python, int(rest[0]), rest[1], rest[2], os.environ["VMBUSOPS_PEER_PASSWORD"]))
    else:
        raise SystemExit(f"unknown peer command {what!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
