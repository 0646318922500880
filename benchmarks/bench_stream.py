"""What SSE followers cost the agent's process, with no guest, engine or simulator beside them.

    ./scripts/bench stream [--jobs 100] [--interval-ms 10] [--seconds 6] [--rounds 3]

The journal writer, broadcaster and followers of the agent (``api/broadcast.py``,
``api/follow.py``), wired as ``api/server.py`` wires them, behind hypercorn and the application's
own middleware (``api/app.py``'s ``Api`` with the security headers), on loopback. A task adds one
record to each of --jobs running jobs every --interval-ms and the writer commits them on its own
rhythm. Rounds alternate a window of --seconds with no follower and one with a follower per job
(raw HTTP clients in a child process, so their parsing is not counted). The figure is this
process's CPU (utime + stime) in the followed window minus the unfollowed one, over the records
the followers got: the cost of following alone, which ``bench followers`` measures beside an
engine whose own CPU, ten times larger, varies from round to round by more than the whole of it.
While a job is followed the writer commits every ``followed_flush_interval`` (30 ms) instead of
``flush_interval`` (50 ms), so that records reach followers sooner; those extra commits are part
of what following costs, and their share (the writer's thread CPU, followed minus unfollowed) is
printed beside the figure.

Left out: authentication and the job lookup of a real ``GET /events`` (a follower starts a few
hundred records behind the live end and catches up from the journal once), the engine's
commits of state changes, TLS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
import trio


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def followers(port: int, job_ids: list[int], seconds: float) -> None:
    """The child process: one raw HTTP follower per job for ``seconds``; prints the records got."""

    async def one(job_id: int, got: list[int]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=f"/v1/jobs/{job_id}/events", headers=[("Host", "bench")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        while data := await stream.receive_some(1 << 16):
            got[0] += data.count(b"\nevent: record\n")

    async def main() -> None:
        got = [0]
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for job_id in job_ids:
                    nursery.start_soon(one, job_id, got)
        print(got[0], flush=True)

    trio.run(main)


async def serve_and_measure(args: argparse.Namespace, home: Path) -> tuple[list[float], list[float]]:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from vmbusops.api.app import Api
    from vmbusops.api.broadcast import Broadcaster
    from vmbusops.api.connection import install_agent_server
    from vmbusops.api.console import SecurityHeaders
    from vmbusops.api.follow import EventStream, JobFollower
    from vmbusops.api.metrics import AgentMetrics
    from vmbusops.engine.changes import JobChange, pending
    from vmbusops.engine.engine import EngineOptions
    from vmbusops.engine.journal import Journal
    from vmbusops.engine.readers import JournalReaders
    from vmbusops.engine.states import State
    from vmbusops.engine.writer import JournalWriter
    from vmbusops.owner import current_owner
    from vmbusops.records import OutputRecord

    journal = Journal(home / "journal.sqlite")
    jobs: list[tuple[int, int]] = []
    for i in range(args.jobs):
        vm = f"vm{i:03d}"
        job_id, runs = journal.create_job(
            bundle_name="bench", bundle_version=1, bundle_id=f"bench-{i}", source="bench", manifest="{}",
            bundle_dir=None, enable_guest_services=False, envelope=None, host="bench", vms=[vm],
            steps=[("stream", "script")], owner=current_owner(), now=time.time(),
        )  # fmt: skip
        journal.apply([], [JobChange(job_id=job_id, state=State.IN_PROGRESS)])
        jobs.append((job_id, runs[vm]))
    broadcaster = Broadcaster()
    options = EngineOptions()
    writer = JournalWriter(journal, flush_interval=options.flush_interval,
                           followed_interval=options.followed_flush_interval)  # fmt: skip
    writer.on_commit = broadcaster.publish_commit
    writer.followed = lambda: broadcaster.followers > 0
    writer.on_tick = broadcaster.pacer.tick
    # The writer's own CPU, read at each commit (a commit carries hundreds of records here).
    writer.timed = True

    class Service:
        """What a follower asks of the agent's service."""

        def __init__(self) -> None:
            self.readers = JournalReaders(journal.path)
            self.catch_up = trio.CapacityLimiter(1)
            self.broadcaster = broadcaster
            self.metrics = AgentMetrics()
            self.running = {job_id for job_id, _ in jobs}

        async def read(self, fn: Any) -> Any:
            return await self.readers.run(fn)

    service = Service()
    seq = dict.fromkeys((job_id for job_id, _ in jobs), 0)

    async def events(request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        job, runs = await service.read(lambda j: (j.job(job_id), j.runs(job_id)))
        follower = JobFollower(service, job, runs, max(0, seq[job_id] - 300))  # type: ignore[arg-type]
        return EventStream(follower.events(), headers={"Cache-Control": "no-store"}, on_writer=follower.use_writer)

    app = Api(routes=[Route("/v1/jobs/{job_id:int}/events", events)], middleware=[Middleware(SecurityHeaders)])
    install_agent_server()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    per_record: list[float] = []
    commits: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))  # type: ignore[arg-type]
        port = int(binds[0].rsplit(":", 1)[1])

        async def produce() -> None:
            due = trio.current_time()
            while True:
                for job_id, run_id in jobs:
                    seq[job_id] += 1
                    record = OutputRecord(value=f"line {seq[job_id]} of job {job_id} at {time.time():.6f}")
                    await writer.add_record(pending((job_id, run_id, seq[job_id], "stream", 1, record, time.time())))
                due += args.interval_ms / 1000
                await trio.sleep_until(due)

        nursery.start_soon(produce)
        await trio.sleep(1.0)
        for r in range(args.rounds):
            before, written = cpu(), writer.cpu_seconds
            await trio.sleep(args.seconds)
            quiet, quiet_writer = cpu() - before, writer.cpu_seconds - written
            ids = ",".join(str(job_id) for job_id, _ in jobs)
            child = await trio.lowlevel.open_process(
                [sys.executable, __file__, "--followers", str(port), ids, str(args.seconds + 2)],
                stdout=subprocess.PIPE,
            )
            await trio.sleep(1.0)  # connected and caught up
            before, written = cpu(), writer.cpu_seconds
            await trio.sleep(args.seconds)
            loud, loud_writer = cpu() - before, writer.cpu_seconds - written
            assert child.stdout is not None
            got = int((await child.stdout.receive_some(100)).decode())
            await child.wait()
            expected = args.jobs * args.seconds * 1000 / args.interval_ms
            per_record.append((loud - quiet) / expected)
            commits.append((loud_writer - quiet_writer) / expected)
            print(f"  round {r}: {quiet / args.seconds * 100:.0f}% CPU unfollowed, {loud / args.seconds * 100:.0f}% "
                  f"followed; {per_record[-1] * 1e6:.1f} us per follower-record, of which the writer's commits "
                  f"{commits[-1] * 1e6:.1f} us ({got} records to the followers in all)", flush=True)  # fmt: skip
            await trio.sleep(1.0)  # the followers gone
        nursery.cancel_scope.cancel()
    service.readers.close()
    journal.close()
    return per_record, commits


def main() -> None:
    if sys.argv[1:2] == ["--followers"]:
        followers(int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"stream bench: {args.jobs} jobs x one record every {args.interval_ms:g} ms, one follower each")
    with tempfile.TemporaryDirectory(prefix="vmbusops-bench-stream-") as name:
        per_record, commits = trio.run(serve_and_measure, args, Path(name))
    print(f"  agent CPU per follower-record: median {statistics.median(per_record) * 1e6:.1f} us "
          f"(goal <= 10 us), of which the writer's more frequent commits {statistics.median(commits) * 1e6:.1f} us")  # fmt: skip


if __name__ == "__main__":
    main()
