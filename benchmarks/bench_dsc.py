"""Pushing a DSC resource module into a guest, and parsing LCM output.

    ./scripts/bench dsc [--files 500] [--lines 200000]

1. a resource module of --files small files into one simulated guest: the dsc step's push
   (one Get-FileHash, Copy-VMFile batches of many statements per pipeline with several pipelines
   at once, one verifying Get-FileHash) against the same files copied with one Copy-VMFile call
   each, one after another. Round trips are pipelines sent to the host;
2. a second push of the same module: nothing to copy (hashes match), a single round trip;
3. LCM events parsed per second, from PSRP records and from console lines, over --lines lines in
   the simulator's (WMF 5.1) format. A real LCM writes a few hundred lines a second at most.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.dsc.lcm import LcmParser
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.dsc import GuestFile, GuestRun, copy_files, push_files
from vmbusops.guestops.host import HyperVHost
from vmbusops.records import Record

PASSWORD = "Bench!" + secrets.token_hex(6)
CRED = GuestCredential("Administrator", Secret(PASSWORD), reference="lab-admin")


class Channel:
    """A GuestChannel that runs scripts directly (no journal) and counts invocations."""

    def __init__(self, host: HyperVHost, vm: str) -> None:
        self.host = host
        self.vm = vm

    async def run(
        self,
        script: str,
        *,
        arguments: Sequence[Any] = (),
        on_record: Callable[[Record], Awaitable[None]] | None = None,
    ) -> GuestRun:
        records, outcome = await self.host.run_in_guest(self.vm, script, CRED, arguments=arguments)
        return GuestRun(outcome, [r.record for r in records])

    async def wait_ready(self) -> None:
        return None

    async def note(self, text: str) -> None:
        return None

    def progress(self, text: str) -> None:
        return None


def make_module(root: Path, count: int) -> list[GuestFile]:
    files = []
    for i in range(count):
        rel = f"DSCResources/Res{i // 50:02d}/file{i:04d}.ps1"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        body = f"# resource helper {i}\nfunction Get-Thing{i} {{ 'value {i}' }}\n".encode()
        path.write_bytes(body)
        guest = "C:\\Program Files\\WindowsPowerShell\\Modules\\BenchRes\\1.0.0\\" + rel.replace("/", "\\")
        files.append(GuestFile(path, guest, hashlib.sha256(body).hexdigest()))
    return files


async def bench_push(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lab = work / "lab.toml"
        lab.write_text(
            '[host]\nname = "HV-BENCH"\n\n'
            f'[[vm]]\nname = "batched"\nguest_services = true\npassword = "{PASSWORD}"\n\n'
            f'[[vm]]\nname = "single"\nguest_services = true\npassword = "{PASSWORD}"\n'
        )
        files = make_module(work / "BenchRes", count)
        async with open_host("sim", config=Config(host="sim", lab=str(lab), max_runspaces=16)) as host:
            t0 = time.perf_counter()
            report = await push_files(host, "batched", files, Channel(host, "batched"))
            batched = time.perf_counter() - t0

            t0 = time.perf_counter()
            for f in files:
                await host.copy_to_guest("single", str(f.source), f.guest)
            single = time.perf_counter() - t0

            t0 = time.perf_counter()
            again = await push_files(host, "batched", files, Channel(host, "batched"))
            second = time.perf_counter() - t0
            t0 = time.perf_counter()
            await copy_files(host, "batched", files)
            copies_only = time.perf_counter() - t0
    print(f"push a module of {count} small files into one guest (simulated host, child process, real PSRP)")
    print(f"  batched + hash-checked : {batched:7.2f} s  {report.round_trips:4d} round trips"
          f"  ({report.copied} copied, every hash verified in the guest)")  # fmt: skip
    print(f"  one Copy-VMFile each   : {single:7.2f} s  {count:4d} round trips  (no verification)")
    print(f"  ratio                  : {single / batched:7.1f}x faster, {count / report.round_trips:.0f}x fewer round trips")
    print(f"  second push (unchanged): {second:7.2f} s  {again.round_trips:4d} round trip(s), {again.copied} copied")
    print(f"  the copies alone       : {copies_only:7.2f} s  ({single / copies_only:.0f}x faster than one by one);"
          " the rest is the two Get-FileHash passes, which the simulator runs file by file")


def lcm_lines(n: int) -> list[str]:
    lines = ["Perform operation 'Invoke CimMethod' with following parameters, ''methodName' = SendConfigurationApply,"
             "'className' = MSFT_DSCLocalConfigurationManager,'namespaceName' = root/Microsoft/Windows/DesiredStateConfiguration'.",
             "[WEB01]: LCM:  [ Start  Set      ]"]  # fmt: skip
    i = 0
    pad = " " * 28
    while len(lines) < n:
        rid = f"[File]Item{i}"
        lines += [
            f"[WEB01]: LCM:  [ Start  Resource ]  [{rid}]",
            f"[WEB01]: LCM:  [ Start  Test     ]  [{rid}]",
            f"[WEB01]:{pad}[{rid}] The system cannot find the file specified.",
            f"[WEB01]: LCM:  [ End    Test     ]  [{rid}]  in 0.0270 seconds.",
            f"[WEB01]: LCM:  [ Start  Set      ]  [{rid}]",
            f"[WEB01]:{pad}[C:\\data\\item{i}.txt] Creating and writing contents and setting attributes.",
            f"[WEB01]: LCM:  [ End    Set      ]  [{rid}]  in 0.0180 seconds.",
            f"[WEB01]: LCM:  [ End    Resource ]  [{rid}]",
        ]
        i += 1
    return lines[:n]


def bench_parse(n: int) -> None:
    lines = lcm_lines(n)
    parser = LcmParser()
    t0 = time.perf_counter()
    events = 0
    for line in lines:
        parser.receive_record("verbose", line)
        for _ in parser.events():
            events += 1
    records = time.perf_counter() - t0
    parser = LcmParser()
    t0 = time.perf_counter()
    console = 0
    for line in lines:
        parser.receive_line("VERBOSE: " + line)
        for _ in parser.events():
            console += 1
    parser.close()
    console += sum(1 for _ in parser.events())
    transcript = time.perf_counter() - t0
    print(f"LCM parser over {n} lines ({events} events)")
    print(f"  PSRP records     : {events / records:10,.0f} events/s")
    print(f"  console lines    : {console / transcript:10,.0f} events/s (wrap detection on)")
    print("  a real LCM writes at most a few hundred lines per second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    trio.run(bench_push, args.files)
    bench_parse(args.lines)


if __name__ == "__main__":
    main()
