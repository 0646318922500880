"""The fleet against the single-host engine and against its own hosts without the fleet: wall time
of one job over every VM, record latency guest -> controller SSE follower, and CPU per record.

    ./scripts/bench fleet [--agents 20] [--vms-per-host 50] [--latency-ms 250] [--concurrency 200]
                          [--followers 20] [--records 10] [--interval-ms 100] [--rounds 3] [--quick]
                          [--keep-logs DIR]

Fleet: a local fleet (:class:`vmbusops.fleet.localfleet.LocalFleet`): nats-server on loopback, one
controller (``--canary 0``), and ``--agents`` agents, each serving one simulated host of a lab
whose ``[generate]`` spreads agents x vms-per-host VMs round robin over the hosts, every guest
answering after ``--latency-ms``. One signed job over every VM, fleet max concurrency
``--concurrency``, submitted to the controller's API.

Single host: one ``vmbusops agent`` (no fleet) over one simulated host with vms-per-host VMs of the
same latency, the same script, max concurrency = the per-host share of the fleet's
(concurrency / agents), one job over all its VMs.

Peer: the fleet's hosts without the fleet: ``--agents`` independent ``vmbusops agent`` processes
side by side (no broker, no controller), each over a simulated host of its own with vms-per-host
VMs of the same latency and script, each with the per-host share of the concurrency; one job on
each, all submitted at once; its wall ends when the last of them has ended. ``--followers``
followers follow each of those jobs, so the peer's agents send as many records over SSE as the
controller does.

Each run's one step writes ``--records`` output records, one every ``--interval-ms``, each
carrying the guest's clock (``Get-Date -Format o``); ``--followers`` SSE followers of the job
(connected as soon as it is accepted) take each record's time from the guest's emission to the
moment they have it off the socket (bench_followers.py's follower).

Each round runs alone: the processes of the other two sides are stopped (SIGSTOP) meanwhile and go
on (SIGCONT) after, so no side's idle work (the fleet's beats, listings and ticks) slows another;
a round starts once its side says it is ready again (the fleet: every VM on a live host). Going
on, each fleet agent finds it has not beaten for longer than ``host_ttl`` and logs that it lost the
broker (with no run to stop); it beats again at once.

Figures (medians over rounds, interleaved fleet, peer, single, fleet, peer, single, ... after one
warm-up round of each, not counted):

* wall: from the POST of the bundle until the job has ended (polled every 50 ms from a thread
  of its own; for the peer, from the first POST until the last of its jobs has ended);
* ideal = waves x per-run time, waves = ceil(VMs / max concurrency) (the same for both sides:
  ceil(agents x N / C) = ceil(N / (C / agents))), per-run time = the median run duration
  (``started_at`` to ``finished_at``) of the single-host rounds: what one run costs with nothing
  of the fleet around it. The nominal per-run time, latency + records x interval, is printed too.
  What it leaves out: the CPU. It assumes each host has its own, as real hosts do; here every
  agent, its simulated host, the controller, nats-server and the followers share this machine's
  cores, so at 1,000 VMs the fleet's wall is bound by the CPU, not by waves (the goal of 1.2 x
  ideal is printed as it is, met or not);
* fleet / peer: the fleet's wall over the peer's, the same hosts, VMs, runs, concurrency per
  host and followers on the same cores, without the fleet layer: what the broker, the controller
  and the agents' fleet side cost on this machine. What it leaves out: the fleet-wide
  concurrency (the peer caps each host at its share, the fleet caps the job at the total, so
  its runs may crowd onto fewer hosts) and the one place the fleet's followers read from;
* CPU-bound floor: the CPU time (utime + stime) of the peer's agents and their simulated hosts
  in a round over the machine's cores: no wall on these cores can be shorter while they all
  run; the same for the fleet's processes (controller, agents, simulated hosts, nats-server);
* record latency guest -> follower p50/p99 (and the part from the record's ``time``, stamped by
  the agent that received it from the guest, to the follower: in the fleet that is agent ->
  nats-server -> controller's projection -> SSE); for the fleet, the part up to the record's batch
  being in the LOG stream (JetStream's timestamp of the message, read back after the round), so the
  controller's share is seen apart, and how many runs were judged lost or moved in each round;
* per round: how long the POST took (verification, the job fact applied) and when the first run
  started after it (dispatch through the broker);
* CPU per record: utime + stime from /proc/PID/stat before and after a round, over the records
  the job journaled: the controller, the agents (summed; their simulated hosts, child processes,
  apart), nats-server; on the single host, its agent; on the peer, its agents (summed) and their
  simulated hosts.

Left out: the simulated hosts' CPU from the ratios to the ideal (a real Hyper-V host runs the
guests; they are in the floor); the followers and the bench run in this process on the same cores
as everything else, so they delay what they measure (their CPU is printed beside the floor);
the guest clock is the machine's, so no clock skew; everything shares one machine and its loopback
(no network, no disk contention between hosts); the fleet's idle cost (heartbeats, placement)
counts into its CPU per record; other work on the machine (its load is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_lab import PASSWORD, Agent, AgentHome, cpu_seconds, percentile, prepare_home, running_agent
from bench_followers import follow

from vmbusops.fleet.localfleet import LocalFleet
from vmbusops.fleet.names import LOG_STREAM
from vmbusops.times import seconds_of

ACTIVE = ("pending", "in-progress", "delayed")


def script(records: int, interval_ms: int) -> str:
    return (
        f"1..{records} | ForEach-Object {{ $t = Get-Date -Format o; "
        f'Write-Output "line $_ at $t"; Start-Sleep -Milliseconds {interval_ms} }}'
    )


def fleet_lab(agents: int, per_host: int, latency_ms: int) -> str:
    return (
        "[host]\nsession_open_ms = 0\nboot_seconds = 0.2\n\n"
        f'[[hosts]]\nprefix = "HV-"\ncount = {agents}\n\n'
        f'[generate]\ncount = {agents * per_host}\nprefix = "vm"\nlatency_ms = {latency_ms}\nhosts = "*"\n'
    )


def wait_ended(jobs: list[tuple[str, str, int]]) -> tuple[float, list[str]]:
    """Poll each (API url, token, job id) every 50 ms until every job has ended; when (perf
    counter) the last was seen ended, and their states. Called in a thread of its own: in the
    event loop it took turns with the followers' tasks, and four hundred of them parsing a
    backlog (the peer's) made it see the end tens of seconds late."""
    clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) for url, token, _ in jobs]
    states = [""] * len(jobs)
    pending = set(range(len(jobs)))
    last = 0.0
    try:
        while pending:
            for i in sorted(pending):
                try:
                    states[i] = clients[i].get(f"/v1/jobs/{jobs[i][2]}").json()["job"]["state"]
                except httpx.TransportError:  # a kept-alive connection the agent closed: next time
                    continue
                if states[i] not in ACTIVE:
                    pending.discard(i)
                    last = time.perf_counter()
            if pending:
                time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return last, states


async def one_round(url: str, token: str, body: bytes, followers: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Submit the bundle ``body``, follow it with ``followers``, wait for its end; wall time, latencies, CPU."""
    got: dict[str, Any] = {"records": 0, "chunks": 0, "guest": [], "agent": [], "spans": {}}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    own = os.times()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
        started, posted = time.perf_counter(), time.time()
        r = await c.post("/v1/jobs", content=body, headers={"Content-Type": "application/octet-stream"})
        while r.status_code == 503 and time.perf_counter() - started < 30:  # a controller renewing its lease
            await trio.sleep(0.1)
            r = await c.post("/v1/jobs", content=body, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        job_id = int(r.json()["job"]["id"])
        accepted = time.perf_counter() - started
        async with trio.open_nursery() as nursery:
            for _ in range(followers):
                nursery.start_soon(follow, url, token, job_id, got)
            ended, states = await trio.to_thread.run_sync(wait_ended, [(url, token, job_id)])
            wall = ended - started
        cpu = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
        now = os.times()
        bench_cpu = now.user + now.system - own.user - own.system
        runs = (await c.get(f"/v1/jobs/{job_id}/runs")).json()["runs"]
    durations = [
        seconds_of(x["finished_at"]) - seconds_of(x["started_at"]) for x in runs if x["started_at"] and x["finished_at"]
    ]
    errors = [f"{x['vm']} {x['state']}: {x['error']}" for x in runs if x["state"] != "success"]
    starts = [seconds_of(x["started_at"]) for x in runs if x["started_at"]]
    return {"wall": wall, "state": states[0], "journaled": sum(x["records"] for x in runs), "cpu": cpu,
            "durations": durations, "errors": errors, "runs": len(runs), "accepted": accepted, "bench_cpu": bench_cpu,
            "first_start": min(starts) - posted if starts else math.nan, **got}  # fmt: skip


async def peer_round(
    agents: list[tuple[Agent, AgentHome]], bodies: list[bytes], followers: int, pids: dict[str, list[int]]
) -> dict[str, Any]:
    """The peer: submit one bundle to each agent at once, follow each job with ``followers``,
    wait until every job has ended; wall time (first POST to last end), latencies, CPU."""
    got: dict[str, Any] = {"records": 0, "chunks": 0, "guest": [], "agent": [], "spans": {}}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    own = os.times()
    job_ids = [0] * len(agents)
    runs: list[dict[str, Any]] = []
    clients = [
        httpx.AsyncClient(base_url=agent.url, headers={"Authorization": f"Bearer {home.token}"}, timeout=300)
        for agent, home in agents
    ]

    async def get(i: int, path: str) -> Any:
        for attempt in range(5):
            try:
                return (await clients[i].get(path)).json()
            except httpx.TransportError:  # a kept-alive connection the agent closed: once more
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def submit(i: int) -> None:
        r = await clients[i].post("/v1/jobs", content=bodies[i], headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        job_ids[i] = int(r.json()["job"]["id"])

    try:
        started, posted = time.perf_counter(), time.time()
        async with trio.open_nursery() as nursery:
            for i in range(len(agents)):
                nursery.start_soon(submit, i)
        accepted = time.perf_counter() - started
        async with trio.open_nursery() as nursery:
            for i, (agent, home) in enumerate(agents):
                for _ in range(followers):
                    nursery.start_soon(follow, agent.url, home.token, job_ids[i], got)
            jobs = [(agent.url, home.token, job_ids[i]) for i, (agent, home) in enumerate(agents)]
            ended, states = await trio.to_thread.run_sync(wait_ended, jobs)
        wall = ended - started
        cpu = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
        now = os.times()
        bench_cpu = now.user + now.system - own.user - own.system
        for i in range(len(agents)):
            runs += (await get(i, f"/v1/jobs/{job_ids[i]}/runs"))["runs"]
    finally:
        for client in clients:
            await client.aclose()
    durations = [
        seconds_of(x["finished_at"]) - seconds_of(x["started_at"]) for x in runs if x["started_at"] and x["finished_at"]
    ]
    errors = [f"{x['vm']} {x['state']}: {x['error']}" for x in runs if x["state"] != "success"]
    starts = [seconds_of(x["started_at"]) for x in runs if x["started_at"]]
    state = "success" if all(s == "success" for s in states) else ",".join(sorted(set(states)))
    return {"wall": wall, "state": state, "journaled": sum(x["records"] for x in runs), "cpu": cpu,
            "durations": durations, "errors": errors, "runs": len(runs), "accepted": accepted, "bench_cpu": bench_cpu,
            "first_start": min(starts) - posted if starts else math.nan, **got}  # fmt: skip


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """Stop ``pids`` (SIGSTOP) for a round and let them go on after (SIGCONT): the sides not
    measured take no CPU meanwhile (the fleet's idle beats, listings and ticks would otherwise
    slow the peer, and the peer's idle agents the fleet)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def settled(urls: list[tuple[str, str]], vms: int | None) -> float:
    """Wait until each API at ``urls`` ((url, token)) says it is ready again after a pause and, with
    ``vms``, until that many VMs are placed on live hosts (a controller); seconds it took."""
    t0 = time.perf_counter()
    for url, token in urls:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            while True:
                try:
                    ready = (await c.get("/v1/health")).status_code == 200
                    if ready and vms is not None:
                        listed = (await c.get("/v1/vms")).json()["vms"]
                        ready = len(listed) >= vms and all(v["alive"] for v in listed)
                except httpx.TransportError:
                    ready = False
                if ready:
                    break
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"{url} is not ready 120 s after its processes went on")
                await trio.sleep(0.2)
    return time.perf_counter() - t0


@contextmanager
def peer_agents(homes: list[AgentHome]) -> Iterator[list[tuple[Agent, AgentHome]]]:
    """``vmbusops agent`` on each home, all started at once (as ``agent_lab.running_agent``
    starts one), stopped (SIGTERM) on exit."""
    exe = str(Path(sys.executable).parent / "vmbusops")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for home in homes:
            with (home.home / "agent.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [exe, "agent", "--listen", "127.0.0.1:0", "--log-level", "warning"], stdout=subprocess.PIPE,
                    stderr=log, env={**os.environ, "VMBUSOPS_HOME": str(home.home)},
                ))  # fmt: skip
        agents = []
        for proc, home in zip(procs, homes, strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                sys.stderr.write((home.home / "agent.log").read_text(errors="replace")[-4000:])
                raise RuntimeError(f"the peer agent of {home.home} did not start")
            agents.append((Agent(pid=proc.pid, url=json.loads(line)["listen"][0]), home))
        yield agents
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def children_of(parents: list[int]) -> list[int]:
    """The processes whose parent is one of ``parents`` (an agent's simulated host)."""
    wanted, out = set(parents), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) in wanted:
                out.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def single_home(root: Path, per_host: int, latency_ms: int, share: int) -> AgentHome:
    vms = [f"vm{i:04d}" for i in range(1, per_host + 1)]
    home = prepare_home(root, vms, max_runspaces=max(64, per_host + 8), max_sessions=max(share, per_host))
    lines = ["[host]", 'name = "HV-SINGLE"', "session_open_ms = 0", "boot_seconds = 0.2", ""]
    for vm in vms:
        lines += ["[[vm]]", f'name = "{vm}"', f'password = "{PASSWORD}"', f"latency_ms = {latency_ms}", ""]
    (root / "lab.toml").write_text("\n".join(lines))
    return home


def bundle_of(home: AgentHome, name: str, vm_pattern: str, text: str, concurrency: int) -> Path:
    """A signed bundle like :meth:`AgentHome.bundle`, over ``vm_pattern``, with max concurrency."""
    import tomli_w

    from vmbusops.bundle.build import build_bundle, sign_bundle

    src = home.home / "src" / name
    src.mkdir(parents=True)
    (src / "bundle.toml").write_text(tomli_w.dumps({
        "name": name, "version": 1, "credential": "lab-admin", "targets": {"vms": [vm_pattern]},
        "execution": {"max_concurrency": concurrency, "max_errors": "100%"},
        "steps": [{"kind": "script", "name": "stream", "inline": text}],
    }))  # fmt: skip
    out = home.home / "src" / f"{name}.vmb"
    build_bundle(src, out)
    sign_bundle(out, home.key)
    return out


def log_split(nats_url: str, after: int) -> dict[str, Any]:
    """The fleet's LOG stream past sequence ``after`` (one round), read once the round has ended:
    for each record of a ``batch``/``batches`` message, the time from its agent's timestamp to
    the message being in the stream (JetStream's own timestamp: the agent's commit, forwarding and
    nats-server), and how many runs were judged ``lost`` or ``moved``. The controller's part of a
    follower's latency is what is left."""
    import asyncio

    import nats
    from nats.js import api

    async def read() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            if (await js.stream_info(LOG_STREAM)).state.last_seq <= after:
                return {"to_log": [], "lost": 0, "moved": 0}
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1,
                ack_policy=api.AckPolicy.NONE, mem_storage=True, inactive_threshold=30.0,
            )  # fmt: skip
            sub = await js.pull_subscribe(">", stream=LOG_STREAM, config=config)
            last = (await js.stream_info(LOG_STREAM)).state.last_seq
            to_log: list[float] = []
            kinds: dict[str, int] = {}
            seq = after
            while seq < last:
                for msg in await sub.fetch(1000, timeout=30):
                    seq = msg.metadata.sequence.stream
                    at = msg.metadata.timestamp.timestamp()
                    body = json.loads(msg.data)
                    kind = body.get("kind", "")
                    kinds[kind] = kinds.get(kind, 0) + 1
                    for batch in body.get("batches") or ([body] if kind == "batch" else []):
                        to_log += [at - record[4] for record in batch["records"]]
            return {"to_log": to_log, "lost": kinds.get("lost", 0), "moved": kinds.get("moved", 0)}
        finally:
            await nc.close()

    return asyncio.run(read())


def log_head(nats_url: str) -> int:
    """The LOG stream's last sequence now."""
    import asyncio

    import nats

    async def read() -> int:
        nc = await nats.connect(nats_url)
        try:
            return int((await nc.jetstream().stream_info(LOG_STREAM)).state.last_seq)
        finally:
            await nc.close()

    return asyncio.run(read())


def pid_of(config: Path) -> int:
    """The process whose command line names ``config`` (the fleet's nats-server)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(config).encode() in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no process runs with {config}")


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--vms-per-host", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=200, help="the fleet's max concurrency")
    parser.add_argument("--followers", type=int, default=20)
    parser.add_argument("--records", type=int, default=10, help="output records per run")
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 agents x 10 VMs, concurrency 20")
    parser.add_argument("--keep-logs", type=Path, help="copy the fleet's logs (controller, agents, nats-server) here")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.vms_per_host, args.concurrency = 4, 10, 20
    total = args.agents * args.vms_per_host
    share = max(1, args.concurrency // args.agents)
    waves = math.ceil(total / args.concurrency)
    text = script(args.records, args.interval_ms)
    nominal = (args.latency_ms + args.records * args.interval_ms) / 1000
    print(f"fleet bench: {args.agents} agents x {args.vms_per_host} VMs = {total} VMs, guest latency "
          f"{args.latency_ms} ms, {args.records} records per run every {args.interval_ms} ms; fleet max concurrency "
          f"{args.concurrency} ({waves} waves); single host: {args.vms_per_host} VMs, max concurrency {share}; "
          f"{args.followers} followers; {args.rounds} rounds; load average before: {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vmbusops-bench-fleet-") as name:
        root = Path(name)
        single = single_home(root / "single", args.vms_per_host, args.latency_ms, share)
        peers = [single_home(root / f"peer{i:02d}", args.vms_per_host, args.latency_ms, share) for i in range(args.agents)]
        signer = AgentHome(home=root / "signer", token="", key=single.key)
        t0 = time.perf_counter()
        with LocalFleet(
            root / "fleet", lab_text=fleet_lab(args.agents, args.vms_per_host, args.latency_ms), key=single.key,
            heartbeat=1.0, host_ttl=10.0, lease_ttl=15.0,
            agent_config=f"[host]\nmax_sessions = {args.vms_per_host}\nmax_runspaces = {args.vms_per_host + 8}\n",
        ) as fleet, running_agent(single.home) as agent, peer_agents(peers) as peer:  # fmt: skip
            print(f"  fleet up and every VM placed, {len(peer)} peer agents and the single agent up in "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
            agent_pids = [p.pid for p in fleet.agents.values()]
            peer_pids = [a.pid for a, _ in peer]
            # Every side's processes are measured in every round: the others' is background.
            pids = {
                "fleet/controller": [fleet.controller_procs[0].pid], "fleet/agents": agent_pids,
                "fleet/simulated hosts": children_of(agent_pids), "fleet/nats": [pid_of(fleet.nats.config_path)],
                "peer/agents": peer_pids, "peer/simulated hosts": children_of(peer_pids),
                "single/agent": [agent.pid], "single/simulated host": children_of([agent.pid]),
            }  # fmt: skip
            fleet_all = [*pids["fleet/controller"], *agent_pids, *pids["fleet/simulated hosts"], *pids["fleet/nats"]]
            stop = {
                "fleet": [*peer_pids, *pids["peer/simulated hosts"], agent.pid, *pids["single/simulated host"]],
                "peer": [*fleet_all, agent.pid, *pids["single/simulated host"]],
                "single": [*fleet_all, *peer_pids, *pids["peer/simulated hosts"]],
            }  # fmt: skip
            apis = {
                "fleet": ([(fleet.url, fleet.token)], total), "peer": ([(a.url, h.token) for a, h in peer], None),
                "single": ([(agent.url, single.token)], None),
            }  # fmt: skip
            results: dict[str, list[dict[str, Any]]] = {"fleet": [], "peer": [], "single": []}
            for r in range(args.rounds + 1):
                for side in ("fleet", "peer", "single"):
                    tag = f"bench-{side}-{r}"
                    with paused(stop[side]):
                        settle = trio.run(settled, *apis[side])
                        if side == "fleet":
                            b = bundle_of(signer, tag, "vm*", text, args.concurrency)
                            head = log_head(fleet.broker_url)
                            out = trio.run(one_round, fleet.url, fleet.token, b.read_bytes(), args.followers, pids)
                            out |= log_split(fleet.broker_url, head)
                        elif side == "peer":
                            bodies = [bundle_of(home, f"{tag}-{i}", "vm*", text, share).read_bytes() for i, (_, home) in enumerate(peer)]
                            out = trio.run(peer_round, peer, bodies, args.followers, pids)
                        else:
                            b = bundle_of(signer, tag, "vm*", text, share)
                            out = trio.run(one_round, agent.url, single.token, b.read_bytes(), args.followers, pids)
                    warm = " (warm-up, not counted)" if r == 0 else ""
                    background = sum(v for k, v in out["cpu"].items() if not k.startswith(side + "/"))
                    print(f"  round {r} {side}: {out['state']}, wall {out['wall']:.2f} s, {out['journaled']} records journaled, "
                          f"accepted in {out['accepted']:.2f} s, first run started {out['first_start']:.2f} s after the POST, "
                          f"CPU {sum(v for k, v in out['cpu'].items() if k.startswith(side + '/')):.1f} s (the other sides', stopped: "
                          f"{background:.1f} s), ready {settle:.1f} s after going on, load {os.getloadavg()[0]:.1f}{warm}")  # fmt: skip
                    if side == "fleet" and (out["lost"] or out["moved"]):
                        print(f"    runs judged lost (their host's entry went unwritten for host_ttl): {out['lost']}, moved: {out['moved']}")
                    for line in out["errors"][:3]:
                        print(f"    not successful: {line}")
                    if r:
                        results[side].append(out)
            report(args, results, waves, nominal, total)
            if args.keep_logs is not None:
                shutil.copytree(fleet.logs_dir, args.keep_logs, dirs_exist_ok=True)
                print(f"  the fleet's logs are in {args.keep_logs}")
            elif any(x["errors"] for v in results.values() for x in v):
                print("  (see the logs: --keep-logs DIR copies them)")


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], waves: int, nominal: float, total: int) -> None:
    fl, pe, sg = results["fleet"], results["peer"], results["single"]
    per_run = statistics.median(d for x in sg for d in x["durations"])
    ideal = waves * per_run
    f_wall = statistics.median(x["wall"] for x in fl)
    p_wall = statistics.median(x["wall"] for x in pe)
    s_wall = statistics.median(x["wall"] for x in sg)
    print(f"\n  per-run time (median run duration, single host): {per_run:.2f} s (nominal {nominal:.2f} s; "
          f"fleet runs' median {statistics.median(d for x in fl for d in x['durations']):.2f} s; peer runs' median "
          f"{statistics.median(d for x in pe for d in x['durations']):.2f} s)")  # fmt: skip
    print(f"  ideal = {waves} waves x {per_run:.2f} s = {ideal:.2f} s (nominal: {waves * nominal:.2f} s)")
    print(f"  wall, median of {len(fl)} rounds: fleet ({total} VMs) {f_wall:.2f} s = {f_wall / ideal:.2f} x ideal; "
          f"single host ({args.vms_per_host} VMs) {s_wall:.2f} s = {s_wall / ideal:.2f} x ideal; "
          f"fleet / single = {f_wall / s_wall:.2f}")  # fmt: skip
    print(f"  wall against the peer ({args.agents} independent agents x {args.vms_per_host} VMs, no fleet, same "
          f"cores): peer {p_wall:.2f} s = {p_wall / ideal:.2f} x ideal; fleet / peer = {f_wall / p_wall:.2f}")  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    for side, xs, wall in (("peer", pe, p_wall), ("fleet", fl, f_wall)):
        floor = statistics.median(sum(v for k, v in x["cpu"].items() if k.startswith(side + "/")) for x in xs) / cores
        with_bench = statistics.median(
            sum(v for k, v in x["cpu"].items() if k.startswith(side + "/")) + x["bench_cpu"] for x in xs
        ) / cores
        print(f"  CPU-bound floor, {side}: its processes' CPU (agents and simulated hosts"
              f"{', controller, nats-server' if side == 'fleet' else ''}) / {cores} cores = {floor:.2f} s; "
              f"its wall / floor = {wall / floor:.2f} (with this process's followers: floor {with_bench:.2f} s, "
              f"wall / floor = {wall / with_bench:.2f})")  # fmt: skip
    print(f"    beyond the ideal, per wave: fleet {(f_wall - ideal) / waves:.2f} s, peer {(p_wall - ideal) / waves:.2f} s, "
          f"single host {(s_wall - ideal) / waves:.2f} s (the POST, dispatch and the job's end included)")  # fmt: skip
    walls = {side: ", ".join(f"{x['wall']:.2f}" for x in xs) for side, xs in results.items()}
    print(f"    rounds: fleet {walls['fleet']}; peer {walls['peer']}; single {walls['single']}")
    sides = (("fleet (controller SSE)", fl), ("peer (agents' SSE)", pe), ("single host (agent SSE)", sg))
    for side, xs in sides:
        guest = [v for x in xs for v in x["guest"]]
        own = [v for x in xs for v in x["agent"]]
        got = [x["records"] for x in xs]
        print(f"  latency guest -> follower, {side}, {args.followers} followers per job: p50 {ms(guest, 50)} ms, "
              f"p99 {ms(guest, 99)} ms, max {ms(guest, 100)} ms; of it the receiving agent's timestamp -> follower: p50 "
              f"{ms(own, 50)} ms, p99 {ms(own, 99)} ms (follower-records per round {min(got)}..{max(got)})")  # fmt: skip
    to_log = [v for x in fl for v in x["to_log"]]
    print(f"    fleet: of it the receiving agent's timestamp -> in the LOG stream (the agent's commit and forwarding, "
          f"nats-server): p50 {ms(to_log, 50)} ms, p99 {ms(to_log, 99)} ms; the rest is the controller's (reading the "
          f"log, its projection, SSE) and the follower's")  # fmt: skip
    for side, prefix, xs in (("fleet", "fleet/", fl), ("peer", "peer/", pe), ("single host", "single/", sg)):
        parts = []
        for k in (k for k in xs[0]["cpu"] if k.startswith(prefix)):
            per = statistics.median(x["cpu"][k] / x["journaled"] for x in xs if x["journaled"])
            parts.append(f"{k.partition('/')[2]} {per * 1e6:.0f} us")
        print(f"  CPU per record journaled, {side}: {', '.join(parts)}")
    print(f"  goal wall within 1.2 x ideal: fleet {f_wall / ideal:.2f} x, {'met' if f_wall <= 1.2 * ideal else 'NOT met'}")
    p99 = percentile([v for x in fl for v in x["guest"]], 99) * 1000 if any(x["guest"] for x in fl) else float("nan")
    print(f"  goal p99 < 100 ms guest -> controller follower: {p99:.1f} ms, {'met' if p99 < 100 else 'NOT met'}")


def stop_cleanly(signum: int, _: object) -> None:
    """SIGTERM or a hangup: leave through the ``with`` blocks, so the paused side goes on
    (SIGCONT) and every process started is stopped; the fleet's live in sessions of their own,
    and a side left stopped would stay so."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_cleanly)
    signal.signal(signal.SIGHUP, stop_cleanly)
    main()
