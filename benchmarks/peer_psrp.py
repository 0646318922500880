"""pypsrp 1.0.0b1's process client, timed on the same work as bench_psrp.py times ours.

Runs under the peer's own interpreter (.venv-peer), never ours: it shares no code with vmbusops.

    python peer_psrp.py pwsh PWSH pipelines N       # N sequential pipelines on a warm pool
    python peer_psrp.py pwsh PWSH records N         # N verbose records streamed from one pipeline
    python peer_psrp.py sim PYTHON pipelines N
    python peer_psrp.py sim PYTHON records N VM USER   # through the guest invoker; password in
                                                       # VMBUSOPS_PEER_PASSWORD, never argv

Prints one JSON object: {"count": ..., "seconds": ...}; opening the pool is not timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from psrpcore.types import PSCredential, PSSecureString

from psrp import AsyncPowerShell, AsyncRunspacePool, ProcessInfo

# The peer's way into a guest and its host with a UI, as the peer tests drive the simulator.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "peer"))
from pypsrp_peer import in_guest, with_ui

VERBOSE_LINE = "LCM:  [ Start  Set      ]  [[File]f$_]"


def server(kind: str, path: str) -> ProcessInfo:
    if kind == "pwsh":
        return ProcessInfo(executable=path, arguments=["-NoLogo", "-NoProfile", "-s"])
    return ProcessInfo(executable=path, arguments=["-m", "vmbusops.sim"])


def pipeline(pool: AsyncRunspacePool, kind: str) -> AsyncPowerShell:
    ps = AsyncPowerShell(pool)
    if kind == "pwsh":
        ps.add_command("Write-Output").add_parameter("InputObject", 1)
    else:
        ps.add_command("Get-VM").add_parameter("Name", "web01")
    return ps


async def pipelines(kind: str, path: str, count: int) -> dict[str, float]:
    # A host with a UI, as our client declares one: both pay for the same host calls.
    async with AsyncRunspacePool(server(kind, path), host=with_ui()) as pool:
        await pipeline(pool, kind).invoke()  # warm
        start = time.perf_counter()
        for _ in range(count):
            await pipeline(pool, kind).invoke()
        return {"count": count, "seconds": time.perf_counter() - start}


async def records(kind: str, path: str, count: int, rest: list[str]) -> dict[str, float]:
    script = f'1..{count} | ForEach-Object {{ Write-Verbose "{VERBOSE_LINE}" -Verbose }}'
    async with AsyncRunspacePool(server(kind, path), host=with_ui()) as pool:
        ps = AsyncPowerShell(pool)
        if kind == "pwsh":
            # Warm, as ours does: the first pipeline on a runspace pays for loading and JIT.
            warm = AsyncPowerShell(pool)
            warm.add_script(script.replace(str(count), "10", 1))
            await warm.invoke()
            ps.add_script(script)
        else:
            vm, user = rest
            password = os.environ["VMBUSOPS_PEER_PASSWORD"]
            ps = in_guest(pool, vm, PSCredential(UserName=user, Password=PSSecureString(password)), script, [])
        start = time.perf_counter()
        await ps.invoke()
        elapsed = time.perf_counter() - start
        return {"count": len(ps.streams.verbose), "seconds": elapsed}


def main() -> None:
    kind, path, what, count, *rest = sys.argv[1:]
    if what == "pipelines":
        result = asyncio.run(pipelines(kind, path, int(count)))
    elif what == "records":
        result = asyncio.run(records(kind, path, int(count), rest))
    else:
        raise SystemExit(f"unknown peer measurement {what!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
