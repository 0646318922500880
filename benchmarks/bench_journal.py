"""Reading one big job's records from the journal, and the agent's status calls while followers catch up.

    ./scripts/bench journal [--sizes 10000,100000,1000000] [--runs 500] [--burst 1] [--page 2000] [--rounds 3]
                            [--cap 60] [--status-records 200000] [--followers 1,4] [--no-reads] [--no-status]
                            [--no-freeze] [--client httpx|h11]

1. Read rate. For each size, one finished job of that many records spread over --runs runs,
   interleaved in time as a fan-out writes them (record i belongs to run i mod runs), each a
   verbose record of an 80-character message. The whole job is read through
   ``Journal.records`` in pages of --page, as ``vmbusops logs`` reads it (a catching-up SSE
   follower reads the same rows in pages of 100, on the agent's event loop when it would rest:
   ``api/follow.py``); figures are records/s and each page's latency (p50/p99/max). The anchor is the
   physical floor measured in the same run, interleaved round by round: the same records read
   with plain sqlite3 (``SELECT ... FROM record_chunks``, a full scan in key order, fetched
   --page rows at a time, each chunk split into its records' lines), once as text and once with
   ``json.loads`` of each record's content. Record i belongs to run i mod runs, so every chunk
   holds one record: the worst case for chunks (a flood's hold dozens; ``--burst 34`` writes
   the runs' records 34 in a row, as 100 guests flooding the engine do on average). Medians of
   --rounds interleaved rounds. A size whose read passes --cap seconds is given up and said so,
   with how far it got (one round only). Before reading, the bench freezes its heap as
   ``vmbusops logs`` and the agent do once they have imported what they run
   (``vmbusops.heap.settle``; ``--no-freeze`` reads without, as another caller of the journal
   would); the garbage collector's time in the pages is printed beside them, and what the
   slowest pages were made of: collecting, on a CPU, and the rest (waiting for the disk or for
   a CPU others had).
2. Status during catch-up. A real ``vmbusops agent`` (over the simulator) is started on a home
   whose journal already holds a finished job of --status-records records over --runs runs.
   ``GET /v1/jobs/{id}`` is called back to back (5 ms apart) while N SSE followers (each
   ``GET /v1/jobs/{id}/events`` with no cursor, in a separate process) read the whole job, and
   for --quiet-seconds with no follower (once the agent is idle again); the rounds are
   interleaved, and a follower still reading after --cap seconds stops and says how far it got. The anchor is the HTTP
   round trip alone: ``GET /v1/health``, which reads no journal, called in turn with the status
   calls, in the quiet periods and during each catch-up: on two shared cores the followers'
   processes and the agent's own sending slow every call, so the health call in the same
   catch-up is the floor a status call can reach there. Both are called with an ``httpx.Client``
   (``--client h11``: with h11 over a plain socket, as the followers read, which costs the bench
   a fraction of httpx's CPU on the same two cores; either way both calls alike).

Goals: a 1M-record job read at >= 100k records/s; every page <= 50 ms; status p99 <= 5 ms
during catch-up.

Left out: writing (the journal is built before timing starts); the page cache is warm for both
our reads and the floor (the floor reads the same file first in the same round); the floor
reads in key order, not time order, and builds no RecordView; a follower's SSE encoding and
socket time are in part 2 only, through what they cost the status call.

Only two functions know the journal's record API: ``populate`` (how rows are written) and
``read_all`` (how a job is paged through).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_lab import PlainClient, cpu_seconds, percentile, prepare_home, running_agent, sse_events

#: 80 characters, as a verbose line of an installer or a DSC resource would be.
MESSAGE = "Installing package contoso-agent 4.2.1 into C:\\Program Files\\Contoso (step 3/7)"
STEP = "stream"


# ---------------------------------------------------------------- the two functions that know the API
def populate(journal: Any, job_id: int, run_ids: Sequence[int], count: int, *, start: float, burst: int = 1) -> None:
    """Write ``count`` records of the job through ``Journal.apply``, 10,000 a transaction:
    records come ``burst`` at a time from one run, the runs in turn (with ``burst`` 1, record i
    is seq i // runs + 1 of run i mod runs), a tenth of a millisecond after one another."""
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    runs = len(run_ids)
    seqs = [0] * runs
    batch: list[tuple[int, int, int, str | None, int, str, float, str]] = []
    for i in range(count):
        content = dumps({"stream": "verbose", "message": f"{i:>9} {MESSAGE}"[:80]})
        r = (i // burst) % runs
        seqs[r] += 1
        batch.append((job_id, run_ids[r], seqs[r], STEP, 1, "verbose", start + i * 1e-4, content))
        if len(batch) == 10_000:
            journal.apply(batch, [])
            batch = []
    journal.apply(batch, [])


def read_all(
    journal: Any, job_id: int, page: int, deadline: float, collector: CollectorClock
) -> tuple[int, list[float], list[tuple[float, float, int, int]], bool]:
    """Page through the whole job as ``vmbusops logs`` does: (records read, each page's seconds,
    each page's (seconds of the collector, seconds this thread was on a CPU, times it waited
    (for the disk), times the kernel gave its CPU to another), whether it reached the end before
    ``deadline``). The cursor is the last record's number."""
    after = 0
    pages: list[float] = []
    causes: list[tuple[float, float, int, int]] = []
    total = 0
    while time.perf_counter() < deadline:
        collected = collector.seconds
        on_cpu = time.thread_time()
        switched = resource.getrusage(resource.RUSAGE_THREAD)
        started = time.perf_counter()
        batch = journal.records(job_id, after=after, limit=page)
        pages.append(time.perf_counter() - started)
        now = resource.getrusage(resource.RUSAGE_THREAD)
        causes.append((collector.seconds - collected, time.thread_time() - on_cpu,
                       now.ru_nvcsw - switched.ru_nvcsw, now.ru_nivcsw - switched.ru_nivcsw))  # fmt: skip
        if batch:
            after = batch[-1].n
        total += len(batch)
        if len(batch) < page:
            return total, pages, causes, True
    return total, pages, causes, False


class CollectorClock:
    """The cyclic garbage collector's time in this process, from ``gc.callbacks``: in all
    (``seconds``) and of its full collections (``full``, one entry each)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        self.seconds += now - self._started
        if info["generation"] == 2:
            self.full.append(now - self._started)

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


# ---------------------------------------------------------------- building a journal
def build_journal(path: Path, runs: int, count: int, burst: int = 1) -> int:
    """A journal file holding one finished job of ``count`` records over ``runs`` runs; its id."""
    from vmbusops.engine.changes import JobChange, RunChange, StepChange
    from vmbusops.engine.journal import Journal
    from vmbusops.engine.states import State
    from vmbusops.owner import current_owner

    journal = Journal(path)
    start = time.time() - count * 1e-4 - 60
    try:
        job_id, by_vm = journal.create_job(
            bundle_name="bench-journal", bundle_version=1, bundle_id=os.urandom(16).hex(), source="bench",
            manifest="{}", bundle_dir=None, enable_guest_services=False, envelope=None, host="HV-BENCH",
            vms=[f"vm{i:04d}" for i in range(runs)], steps=[(STEP, "script")], owner=current_owner(), now=start,
        )  # fmt: skip
        run_ids = list(by_vm.values())
        populate(journal, job_id, run_ids, count, start=start, burst=burst)
        end = start + count * 1e-4
        changes: list[Any] = [
            JobChange(job_id=job_id, state=State.SUCCESS, started_at=start, finished_at=end)
        ]
        for i, run_id in enumerate(run_ids):
            records = count // runs + (1 if i < count % runs else 0)
            changes += [
                StepChange(run_id=run_id, index=0, state=State.SUCCESS, attempts=1, started_at=start, finished_at=end),
                RunChange(run_id=run_id, state=State.SUCCESS, current_step=None, records=records,
                          started_at=start, finished_at=end),
            ]  # fmt: skip
        journal.apply([], changes)
    finally:
        journal.close()
    return job_id


def floor_scan(path: Path, page: int, decode: bool) -> tuple[int, float, list[float]]:
    """The same records through plain sqlite3: (records, seconds, each page's seconds). The rows
    are chunks of records (engine.journal_records), fetched --page rows at a time; each is split
    into its records' lines, the least that gives the records as text."""
    db = sqlite3.connect(path)
    try:
        started = time.perf_counter()
        cur = db.execute("SELECT count, times, body FROM record_chunks")
        total = 0
        pages: list[float] = []
        loads = json.loads
        while True:
            t = time.perf_counter()
            rows = cur.fetchmany(page)
            for _, _, body in rows:
                lines = body.split("\n")
                total += len(lines)
                if decode:
                    for line in lines:
                        loads(line.split("\t", 1)[1])
            pages.append(time.perf_counter() - t)
            if len(rows) < page:
                return total, time.perf_counter() - started, pages
    finally:
        db.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def read_rate(args: argparse.Namespace, tmp: Path) -> dict[str | int, Any]:
    from vmbusops import heap
    from vmbusops.engine.journal import Journal

    results: dict[str | int, Any] = {"all_pages": []}
    for size in args.sizes:
        path = tmp / f"journal-{size}.sqlite"
        built = time.perf_counter()
        job_id = build_journal(path, args.runs, size, args.burst)
        print(f"  {size:>9,} records: journal built in {time.perf_counter() - built:.1f} s "
              f"({path.stat().st_size / 2**20:.0f} MiB)", flush=True)  # fmt: skip
        ours: list[float] = []
        pages: list[float] = []
        raw: list[float] = []
        raw_pages: list[float] = []
        decoded: list[float] = []
        gave_up: tuple[float, int] | None = None
        causes: list[tuple[float, float, int, int]] = []
        journal = Journal(path)
        if not args.no_freeze:  # what `vmbusops logs` does once it has opened the journal
            heap.program_started()
            heap.settle()
        collector = CollectorClock()
        try:
            for _ in range(args.rounds):
                if gave_up is None:
                    started = time.perf_counter()
                    got, round_pages, round_causes, done = read_all(
                        journal, job_id, args.page, started + args.cap, collector
                    )
                    elapsed = time.perf_counter() - started
                    pages += round_pages
                    causes += round_causes
                    if done:
                        assert got == size, (got, size)
                        ours.append(size / elapsed)
                    else:
                        gave_up = (elapsed, got)
                n, seconds, floor_pages = floor_scan(path, args.page, decode=False)
                assert n == size
                raw.append(size / seconds)
                raw_pages += floor_pages
                n, seconds, _ = floor_scan(path, args.page, decode=True)
                decoded.append(size / seconds)
        finally:
            collector.close()
            journal.close()
            path.unlink()
        raw_rate, decoded_rate = statistics.median(raw), statistics.median(decoded)
        results["all_pages"] += pages
        results[size] = ours
        line = f"  {size:>9,} records: "
        if gave_up is not None:
            line += (f"Journal.records gave up after {gave_up[0]:.0f} s at {gave_up[1]:,} records "
                     f"({gave_up[1] / gave_up[0]:,.0f}/s so far)")  # fmt: skip
        else:
            rate = statistics.median(ours)
            line += (f"Journal.records {rate:,.0f}/s = {rate / raw_rate:.3f} x raw sqlite3, "
                     f"{rate / decoded_rate:.3f} x sqlite3+json.loads")  # fmt: skip
        print(line)
        print(f"      floor: raw sqlite3 {raw_rate:,.0f}/s, +json.loads {decoded_rate:,.0f}/s "
              f"(medians of {len(raw)} rounds; ours of {len(ours) or 1})")  # fmt: skip
        print(f"      pages of {args.page}: ours p50 {ms(statistics.median(pages))} ms, p99 {ms(percentile(pages, 99))} "
              f"ms, max {ms(max(pages))} ms over {len(pages)} pages; raw sqlite3 page p50 "
              f"{ms(statistics.median(raw_pages))} ms, max {ms(max(raw_pages))} ms", flush=True)  # fmt: skip
        full = collector.full
        print(f"      the garbage collector: {ms(sum(c[0] for c in causes))} ms in our pages ({len(full)} full "
              f"collections in all, max {ms(max(full, default=0.0))} ms"
              f"{'' if args.no_freeze else '; the heap frozen as logs does'})", flush=True)  # fmt: skip
        slowest = sorted(range(len(pages)), key=pages.__getitem__)[-3:][::-1]
        print("      the slowest pages: " + "; ".join(
            f"{ms(pages[i])} ms, of it {ms(causes[i][0])} collecting, {ms(causes[i][1])} on a CPU "
            f"(waited {causes[i][2]}x, preempted {causes[i][3]}x)" for i in slowest
        ) + " (off a CPU: waiting for the disk, or preempted by the machine's other work)",
              flush=True)  # fmt: skip
    return results


# ---------------------------------------------------------------- status calls during catch-up
def follow_child(url: str, job_id: int, followers: int, cap: float) -> None:
    """(In a child process) ``followers`` SSE followers read the whole job, each giving up at its
    first event after ``cap`` seconds; print what each got and how long it took."""
    token = os.environ["BENCH_TOKEN"]
    counts = [0] * followers
    seconds = [0.0] * followers

    def one(i: int) -> None:
        started = time.perf_counter()
        for name, _ in sse_events(url, token, job_id):
            if name == b"record":
                counts[i] += 1
            if time.perf_counter() - started > cap:
                break
        seconds[i] = time.perf_counter() - started

    threads = [threading.Thread(target=one, args=(i,)) for i in range(followers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"counts": counts, "seconds": seconds}), flush=True)


def wait_idle(pid: int, limit: float = 300.0) -> None:
    """Until the agent uses under a tenth of a core: a follower that went away leaves its last
    journal read running, which must not count against the next quiet period."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.05:
            return


def status_calls(client: httpx.Client | PlainClient, paths: Sequence[str], until: Any) -> list[list[float]]:
    """Seconds of each ``GET path``, the paths taken in turn, 5 ms apart, until ``until()``; one
    list per path."""
    out: list[list[float]] = [[] for _ in paths]
    while not until():
        for path, into in zip(paths, out, strict=True):
            started = time.perf_counter()
            r = client.get(path)
            into.append(time.perf_counter() - started)
            assert r.status_code in (200, 503), r.text  # health says 503 while the host is down
            time.sleep(0.005)
    return out


def status_during_catch_up(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    home = tmp / "home"
    lab = prepare_home(home, ["bench000"])
    built = time.perf_counter()
    job_id = build_journal(home / "journal" / "journal.sqlite", args.runs, args.status_records, args.burst)
    print(f"  journal of {args.status_records:,} records over {args.runs} runs built in "
          f"{time.perf_counter() - built:.1f} s; agent started on it; calls made with {args.client}", flush=True)  # fmt: skip
    quiet: list[float] = []
    health: list[float] = []
    status = f"/v1/jobs/{job_id}"
    busy: dict[int, list[float]] = {f: [] for f in args.followers}
    busy_health: dict[int, list[float]] = {f: [] for f in args.followers}
    catch_up: dict[int, list[tuple[float, int]]] = {f: [] for f in args.followers}
    with running_agent(home) as agent, (
        httpx.Client(base_url=agent.url, headers={"Authorization": f"Bearer {lab.token}"}, timeout=120)
        if args.client == "httpx" else PlainClient(agent.url, lab.token)
    ) as client:
        for _ in range(args.rounds):
            for followers in args.followers:
                end = time.perf_counter() + args.quiet_seconds
                got_status, got_health = status_calls(
                    client, [status, "/v1/health"], lambda end=end: time.perf_counter() > end
                )
                quiet += got_status
                health += got_health
                child = subprocess.Popen(
                    [sys.executable, __file__, "--follow-child", agent.url, str(job_id), str(followers),
                     str(args.cap)],
                    stdout=subprocess.PIPE, env={**os.environ, "BENCH_TOKEN": lab.token},
                )  # fmt: skip
                got_status, got_health = status_calls(
                    client, [status, "/v1/health"], lambda child=child: child.poll() is not None
                )
                busy[followers] += got_status
                busy_health[followers] += got_health
                assert child.stdout is not None
                got = json.loads(child.stdout.read())
                catch_up[followers].append((max(got["seconds"]), min(got["counts"])))
                wait_idle(agent.pid)
    print(f"  GET /v1/jobs/{{id}} ({args.runs} runs), no follower: p50 {ms(statistics.median(quiet))} ms, "
          f"p99 {ms(percentile(quiet, 99))} ms, max {ms(max(quiet))} ms ({len(quiet)} calls); the HTTP round "
          f"trip alone (GET /v1/health): p50 {ms(statistics.median(health))} ms, p99 {ms(percentile(health, 99))} ms")  # fmt: skip
    p99s = {}
    for followers, lat in busy.items():
        p99s[followers] = percentile(lat, 99)
        runs = catch_up[followers]
        done = [r for r in runs if r[1] == args.status_records]
        seconds = statistics.median(r[0] for r in runs)
        state = (f"each read all {args.status_records:,} in {seconds:.1f} s (median of {len(runs)}) = "
                 f"{args.status_records * followers / seconds:,.0f} records/s delivered"
                 if len(done) == len(runs) else f"{len(runs) - len(done)} of {len(runs)} rounds gave up "
                 f"after {args.cap:.0f} s, the slowest follower at {statistics.median(r[1] for r in runs):,.0f} "
                 f"records (median)")  # fmt: skip
        alone = busy_health[followers]
        print(f"  with {followers} catching-up follower(s): p50 {ms(statistics.median(lat))} ms, "
              f"p99 {ms(p99s[followers])} ms = {p99s[followers] / percentile(quiet, 99):.1f} x no-follower p99, "
              f"max {ms(max(lat))} ms ({len(lat)} calls); {state}")  # fmt: skip
        print(f"    the HTTP round trip alone in the same catch-up (GET /v1/health, in turn with the status "
              f"calls): p50 {ms(statistics.median(alone))} ms, p99 {ms(percentile(alone, 99))} ms; status p99 "
              f"= {p99s[followers] / percentile(alone, 99):.2f} x it")  # fmt: skip
    return {"p99": max(p99s.values())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument(
        "--burst", type=int, default=1, help="records of one run in a row (1: the runs interleave record by record)"
    )
    parser.add_argument("--page", type=int, default=2000)  # the journal's READ_PAGE, as logs reads
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cap", type=float, default=60.0, help="seconds before a read is given up")
    parser.add_argument("--status-records", type=int, default=200_000)
    parser.add_argument("--followers", type=ints, default=[1, 4])
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument(
        "--client", choices=("httpx", "h11"), default="httpx",
        help="the status and health calls' client: httpx, or h11 over a plain socket (agent_lab.PlainClient)",
    )  # fmt: skip
    parser.add_argument("--no-reads", action="store_true")
    parser.add_argument("--no-status", action="store_true")
    parser.add_argument(
        "--no-freeze", action="store_true",
        help="read without freezing the heap first (vmbusops.heap.settle, as `vmbusops logs` and the agent do)",
    )  # fmt: skip
    parser.add_argument("--follow-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow_child:
        url, job_id, followers, cap = args.follow_child
        follow_child(url, int(job_id), int(followers), float(cap))
        return
    print(f"journal bench: one job over {args.runs} runs ({args.burst} record(s) of a run in a row),"
          f" read in pages of {args.page}, {args.rounds} "
          f"interleaved rounds (ours, raw sqlite3, sqlite3+json.loads)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vmbusops-bench-journal-") as name:
        tmp = Path(name)
        reads = read_rate(args, tmp) if not args.no_reads else None
        status = None if args.no_status else status_during_catch_up(args, tmp)
    print("goals:")
    if reads is not None:
        big = reads.get(1_000_000)
        if big is None:
            print("  1M-record job read at >= 100k records/s: not measured (--sizes has no 1000000)")
        elif not big:
            print("  1M-record job read at >= 100k records/s: NOT met (gave up, see above)")
        else:
            rate = statistics.median(big)
            print(
                f"  1M-record job read at >= 100k records/s: {rate:,.0f}/s, {'met' if rate >= 100_000 else 'NOT met'}"
            )
        worst = max(reads["all_pages"])
        print(f"  every page <= 50 ms: worst {ms(worst)} ms of every page read (to the end or the cap), "
              f"{'met' if worst <= 0.05 else 'NOT met'}")  # fmt: skip
    if status is not None:
        p99 = status["p99"]
        print(f"  status p99 <= 5 ms during catch-up: {ms(p99)} ms, {'met' if p99 <= 0.005 else 'NOT met'}")


if __name__ == "__main__":
    main()
