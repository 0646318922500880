"""The job engine against the simulator: journal throughput, memory under a flood, overhead.

    ./scripts/bench engine [--vms 100] [--lines 2000] [--flood-mib 1024] [--session-ms 300]

1. records per second journaled while 100 guests stream at once, and the journal's share of this
   process's CPU (worker-thread CPU time of the journal writes / process CPU time);
2. peak RSS while one guest streams --flood-mib of output as long verbose lines: sampled as the
   output grows, so a flat line shows memory is bounded by buffers, not by output size;
3. the engine's wall time over bare ``exec`` (guestops.fanout) for the same fan-out;
4. batching: three guest steps as one Invoke-Command against three, with a session-open cost.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from vmbusops.bundle.manifest import manifest_from_dict
from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.engine import EngineOptions, JobSource, Journal, open_engine
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.fanout import exec_in_guests
from vmbusops.records import GuestRecord

PASSWORD = "Bench!" + secrets.token_hex(6)
CRED = GuestCredential("Administrator", Secret(PASSWORD), reference="lab-admin")


def write_lab(path: Path, count: int, *, session_open_ms: float = 0) -> Path:
    lines = ["[host]", 'name = "HV-BENCH"', f"session_open_ms = {session_open_ms}", "boot_seconds = 0.2", ""]
    for i in range(count):
        lines += ["[[vm]]", f'name = "bench{i:03d}"', f'password = "{PASSWORD}"', ""]
    path.write_text("\n".join(lines))
    return path


def manifest(steps: list[dict[str, Any]], concurrency: int) -> Any:
    now = datetime.now(UTC)
    return manifest_from_dict(
        {
            "name": "bench",
            "version": 1,
            "id": str(uuid.uuid4()),
            "issued": now.isoformat(),
            "expires": (now + timedelta(hours=1)).isoformat(),
            "targets": {"vms": ["bench*"]},
            "credential": "lab-admin",
            "steps": steps,
            "execution": {"max_concurrency": concurrency, "max_errors": 1000},
            "files": [],
        }
    )


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bench_throughput(work: Path, vms: int, lines: int) -> tuple[float, float]:
    lab = write_lab(work / "lab-fanout.toml", vms)
    script = f"1..{lines} | ForEach-Object {{ Write-Output \"line $_ of the patch log\" }}"
    m = manifest([{"kind": "script", "name": "stream", "inline": script}], vms)
    config = Config(host="sim", lab=str(lab), max_runspaces=vms + 8)
    journal = Journal(work / "throughput.sqlite")
    async with open_host("sim", config=config) as host:
        async with open_engine(host, journal, credential_for=lambda _: CRED) as engine:
            cpu0, t0 = time.process_time(), time.perf_counter()
            result = await engine.run_job(JobSource(manifest=m, directory=None, source="bench"))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            written = engine.writer.records_written
            journal_cpu = engine.writer.cpu_seconds
        bare_t = await bench_bare(host, [f"bench{i:03d}" for i in range(vms)], script, vms)
    assert result.state.value == "success", result.errors
    rate = written / elapsed
    print(f"[1] {vms} concurrent runs, {written} records journaled in {elapsed:.2f}s: {rate:,.0f} records/s")
    print(f"    journal CPU {journal_cpu:.2f}s of {cpu:.2f}s agent CPU = {100 * journal_cpu / cpu:.1f}%")
    overhead = 100 * (elapsed - bare_t) / bare_t
    print(f"[3] same fan-out: engine {elapsed:.2f}s, bare exec {bare_t:.2f}s: overhead {overhead:+.1f}% (goal < 5%)")
    return rate, overhead


async def bench_bare(host: Any, vms: list[str], script: str, concurrency: int) -> float:
    count = 0

    def on_record(_: GuestRecord) -> None:
        nonlocal count
        count += 1

    t0 = time.perf_counter()
    await exec_in_guests(host, vms, script, CRED, on_record=on_record, max_concurrency=concurrency)
    return time.perf_counter() - t0


async def bench_flood(work: Path, mib: int) -> None:
    lab = write_lab(work / "lab-flood.toml", 1)
    line_kib = 64
    count = mib * 1024 // line_kib
    chunk = "v" * (line_kib * 1024 - 1)
    script = f"$line = '{chunk}'\n1..{count} | ForEach-Object {{ Write-Verbose $line }}"
    m = manifest([{"kind": "script", "name": "flood", "inline": script}], 1)
    config = Config(host="sim", lab=str(lab), max_runspaces=4)
    journal = Journal(work / "flood.sqlite")
    samples: list[tuple[float, float]] = []
    received = 0

    def on_event(event: Any) -> None:
        nonlocal received
        if hasattr(event, "record"):
            received += 1
            if received % max(1, count // 8) == 0:
                samples.append((received * line_kib / 1024, rss_mib()))

    base = rss_mib()
    async with open_host("sim", config=config) as host:
        options = EngineOptions(flush_records=64, max_buffer=256)
        async with open_engine(host, journal, credential_for=lambda _: CRED, options=options, on_event=on_event) as e:
            t0 = time.perf_counter()
            await e.run_job(JobSource(manifest=m, directory=None, source="bench"))
            elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[2] one guest streamed {mib} MiB of verbose output in {elapsed:.1f}s ({mib / elapsed:.0f} MiB/s)")
    print(f"    RSS before {base:.0f} MiB; as output grew: " + ", ".join(f"{m_:.0f}MiB->{r:.0f}" for m_, r in samples))
    print(f"    peak RSS of the process {peak:.0f} MiB (buffers: 256 records of {line_kib} KiB max)")


async def bench_batching(work: Path, vms: int, session_ms: float) -> None:
    lab = write_lab(work / "lab-sessions.toml", vms, session_open_ms=session_ms)
    steps = [{"kind": "script", "name": f"s{i}", "inline": f"Write-Output 'step {i}'"} for i in range(3)]
    config = Config(host="sim", lab=str(lab), max_runspaces=vms + 8)
    async with open_host("sim", config=config) as host:
        async with open_engine(host, Journal(work / "sessions.sqlite"), credential_for=lambda _: CRED) as engine:
            t0 = time.perf_counter()
            await engine.run_job(JobSource(manifest=manifest(steps, vms), source="bench", directory=None))
            batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        names = [f"bench{i:03d}" for i in range(vms)]
        for step in steps:
            await exec_in_guests(host, names, step["inline"], CRED, on_record=lambda _: None, max_concurrency=vms)
        separate = time.perf_counter() - t0
    print(
        f"[4] 3 guest steps on {vms} VMs, session open {session_ms:g} ms: one batched Invoke-Command per run"
        f" {batched:.2f}s, one per step {separate:.2f}s ({separate / batched:.1f}x)"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="vmbusops-bench-") as tmp:
        work = Path(tmp)
        os.environ["VMBUSOPS_HOME"] = str(work / "home")
        await bench_throughput(work, args.vms, args.lines)
        await bench_flood(work, args.flood_mib)
        await bench_batching(work, 10, args.session_ms)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--flood-mib", type=int, default=256)
    parser.add_argument("--session-ms", type=float, default=300)
    trio.run(main, parser.parse_args())
    sys.exit(0)
