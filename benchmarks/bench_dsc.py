"""Pushing a DSC resource module into a guest, and parsing LCM output.

    ./scripts/bench dsc [--files 500] [--rounds 5] [--lines 200000]

1. a resource module of --files small files into one simulated guest: the dsc step's push
   (one Get-FileHash, Copy-VMFile batches of many statements per pipeline with several pipelines
   at once, one verifying Get-FileHash) against the same files copied with one Copy-VMFile call
   each, one after another (the anchor: what a script calling the cmdlet per file does), and the
   batched copies alone (no hashing). Round trips are pipelines sent to the host.
   Every round of every side starts from a fresh simulator state (its own home, lab and empty
   guest disk, in a new simulator process, started before timing), so each round copies every
   file; the bench checks the count each round reports and, untimed, that every file is in the
   guest with its hash. Rounds run batched, one by one, copies alone, batched, ...; figures are
   medians, ratios are of medians, with their spread per round;
2. a second push of the same module, right after the first in each batched round: nothing to
   copy (hashes match), a single round trip;
3. LCM events parsed per second, from PSRP records and from console lines (interleaved rounds,
   medians), over --lines lines in the simulator's (WMF 5.1) format. A real LCM writes a few
   hundred lines a second at most.

The output ends with what these figures leave out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.dsc.lcm import LcmParser
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.dsc import GuestFile, GuestRun, PushReport, copy_files, guest_hashes, push_files
from vmbusops.guestops.host import HyperVHost
from vmbusops.home import ENV_HOME
from vmbusops.records import Record

PASSWORD = "Bench!" + secrets.token_hex(6)
CRED = GuestCredential("Administrator", Secret(PASSWORD), reference="lab-admin")
VM = "web01"
# Each round sends its first pipeline of each shape to FIRST_VM, untimed or timed apart, and times VM.
FIRST_VM = "web02"


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
        quiet: bool = False,  # nothing is journaled here, quiet or not
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


LAB = "".join(
    ['[host]\nname = "HV-BENCH"\n']
    + [
        f'\n[[vm]]\nname = "{name}"\nguest_services = true\npassword = "{PASSWORD}"\n'
        for name in (VM, FIRST_VM)
    ]
)

LEFT_OUT = """What these figures leave out:
  * Hyper-V: the simulator copies on the local disk and runs Get-FileHash file by file in Python;
    a real host's VMBus transfer and a real guest's hashing cost differently, per file and per
    byte, so the ratio is of round trips and per-call overhead, not of a real Copy-VMFile;
  * starting the simulator and opening its pool: before timing, every round (a fresh state);
  * the pool's first pipeline of each shape: our client serializes it through psrpcore once
    (milliseconds per statement) and fills a template afterwards; the timed pushes run on a pool
    that has sent the same shapes to another guest, as an agent's long-lived pool has; the
    first-push line is the same push on a new pool;
  * a warm guest: each round copies into an empty guest, so the batched side's first
    Get-FileHash finds nothing; the second push line is the case where everything is there;
  * the anchor verifies nothing: one Copy-VMFile each is timed without any Get-FileHash;
  * the machine: 2 cores shared with other work; medians of interleaved rounds damp that noise,
    they do not remove it."""


@asynccontextmanager
async def fresh_host(files: Sequence[GuestFile]) -> AsyncIterator[HyperVHost]:
    """A simulator with a state of its own: new home, lab and guest disks; nothing copied yet."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        lab = Path(tmp) / "lab.toml"
        lab.write_text(LAB)
        before = os.environ.get(ENV_HOME)
        os.environ[ENV_HOME] = str(home)
        try:
            async with open_host("sim", config=Config(host="sim", lab=str(lab), max_runspaces=16)) as host:
                for vm in (VM, FIRST_VM):
                    present = await guest_hashes(Channel(host, vm), [f.guest for f in files])
                    assert not present, f"a fresh guest {vm} already holds {len(present)} of the files"
                yield host
        finally:
            if before is None:
                os.environ.pop(ENV_HOME, None)
            else:
                os.environ[ENV_HOME] = before


async def assert_in_guest(host: HyperVHost, vm: str, files: Sequence[GuestFile], side: str) -> None:
    """Untimed: every file is in the guest with the hash the module lists."""
    present = await guest_hashes(Channel(host, vm), [f.guest for f in files])
    right = sum(1 for f in files if present.get(f.guest.casefold()) == f.sha256)
    assert right == len(files), f"{side}: {right} of {len(files)} files in {vm} with their hash"


async def timed_push(host: HyperVHost, vm: str, files: Sequence[GuestFile]) -> tuple[float, PushReport]:
    t0 = time.perf_counter()
    report = await push_files(host, vm, files, Channel(host, vm))
    return time.perf_counter() - t0, report


async def round_batched(files: Sequence[GuestFile]) -> tuple[float, float, float, int]:
    """First push on the new pool (to one guest), the timed push (to another), the push again."""
    async with fresh_host(files) as host:
        on_new_pool, report = await timed_push(host, FIRST_VM, files)
        assert (report.copied, report.skipped) == (len(files), 0), f"first push: {report}"
        elapsed, report = await timed_push(host, VM, files)
        assert (report.copied, report.skipped) == (len(files), 0), f"batched push: {report}"
        await assert_in_guest(host, VM, files, "batched push")
        again, second = await timed_push(host, VM, files)
        assert (second.copied, second.skipped, second.round_trips) == (0, len(files), 1), f"again: {second}"
    return elapsed, on_new_pool, again, report.round_trips


async def round_single(files: Sequence[GuestFile]) -> float:
    async with fresh_host(files) as host:
        await host.copy_to_guest(
            FIRST_VM, str(files[0].source), files[0].guest
        )  # the pool's first of its shape
        t0 = time.perf_counter()
        for f in files:
            await host.copy_to_guest(VM, str(f.source), f.guest)
        elapsed = time.perf_counter() - t0
        await assert_in_guest(host, VM, files, "one Copy-VMFile each")
    return elapsed


async def round_copies(files: Sequence[GuestFile]) -> tuple[float, int]:
    async with fresh_host(files) as host:
        await copy_files(host, FIRST_VM, files)  # the pool's first batches of their shapes
        t0 = time.perf_counter()
        trips = await copy_files(host, VM, files)
        elapsed = time.perf_counter() - t0
        await assert_in_guest(host, VM, files, "copies alone")
    return elapsed, trips


def spread(ours: list[float], anchor: list[float]) -> str:
    """The ratio anchor / ours of each round, lowest to highest."""
    per_round = [a / o for o, a in zip(ours, anchor, strict=True)]
    return f"per round {min(per_round):.1f}x-{max(per_round):.1f}x"


async def bench_push(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = make_module(Path(tmp) / "BenchRes", count)
        batched: list[float] = []
        first: list[float] = []
        second: list[float] = []
        single: list[float] = []
        copies: list[float] = []
        trips = copy_trips = 0
        for _ in range(rounds):
            elapsed, on_new_pool, again, trips = await round_batched(files)
            batched.append(elapsed)
            first.append(on_new_pool)
            second.append(again)
            single.append(await round_single(files))
            elapsed, copy_trips = await round_copies(files)
            copies.append(elapsed)
    b, s, c, f, a = (statistics.median(x) for x in (batched, single, copies, first, second))
    print(f"push a module of {count} small files into one guest (simulated host, child process, real PSRP)")
    print(f"medians of {rounds} interleaved rounds (batched, one by one, copies alone, ...), each on a fresh")
    print(f"simulator state; every round copied all {count} files, checked in the guest by hash")
    print(
        f"  batched + hash-checked : {b:7.2f} s  {trips:4d} round trips  (every hash verified in the guest)"
    )
    print(f"  one Copy-VMFile each   : {s:7.2f} s  {count:4d} round trips  (no verification; the anchor)")
    print(f"  ratio                  : {s / b:7.2f}x as fast as one by one ({spread(batched, single)}),"
          f" {count / trips:.0f}x fewer round trips")  # fmt: skip
    print(f"  the copies alone       : {c:7.2f} s  {copy_trips:4d} round trips  ({s / c:.2f}x as fast as one by one,"
          f" {spread(copies, single)}); the rest of the push is its two Get-FileHash passes")  # fmt: skip
    print(f"  first push on new pool : {f:7.2f} s  {trips:4d} round trips  ({s / f:.2f}x as fast as one by one,"
          f" {spread(first, single)}): its batch shapes serialized by psrpcore")  # fmt: skip
    print(
        f"  second push (unchanged): {a:7.2f} s     1 round trip, 0 copied ({s / a:.0f}x as fast as one by one)"
    )
    print(LEFT_OUT)


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


def parse_records(lines: list[str]) -> tuple[int, float]:
    parser = LcmParser()
    t0 = time.perf_counter()
    events = 0
    for line in lines:
        parser.receive_record("verbose", line)
        for _ in parser.events():
            events += 1
    return events, time.perf_counter() - t0


def parse_console(lines: list[str]) -> tuple[int, float]:
    parser = LcmParser()
    t0 = time.perf_counter()
    events = 0
    for line in lines:
        parser.receive_line("VERBOSE: " + line)
        for _ in parser.events():
            events += 1
    parser.close()
    events += sum(1 for _ in parser.events())
    return events, time.perf_counter() - t0


def bench_parse(n: int, rounds: int) -> None:
    lines = lcm_lines(n)
    records: list[float] = []
    console: list[float] = []
    events = 0
    for _ in range(rounds):
        events, seconds = parse_records(lines)
        records.append(events / seconds)
        got, seconds = parse_console(lines)
        assert got == events, f"console lines gave {got} events, PSRP records {events}"
        console.append(got / seconds)
    print(f"LCM parser over {n} lines ({events} events), medians of {rounds} interleaved rounds")
    print(f"  PSRP records     : {statistics.median(records):10,.0f} events/s")
    print(f"  console lines    : {statistics.median(console):10,.0f} events/s (wrap detection on)")
    print("  a real LCM writes at most a few hundred lines per second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    trio.run(bench_push, args.files, args.rounds)
    bench_parse(args.lines, args.rounds)


if __name__ == "__main__":
    main()
