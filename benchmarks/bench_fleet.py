"""The fleet against the single-host engine: wall time of one job over every VM, record latency
guest -> controller SSE follower, and CPU per record.

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

Each run's one step writes ``--records`` output records, one every ``--interval-ms``, each
carrying the guest's clock (``Get-Date -Format o``); ``--followers`` SSE followers of the job
(connected as soon as it is accepted) take each record's time from the guest's emission to the
moment they have it off the socket (bench_followers.py's follower).

Figures (medians over rounds, interleaved fleet, single, fleet, single, ... after one warm-up
round of each, not counted):

* wall: from the POST of the bundle until the job has ended (polled every 50 ms);
* ideal = waves x per-run time, waves = ceil(VMs / max concurrency) (the same for both sides:
  ceil(agents x N / C) = ceil(N / (C / agents))), per-run time = the median run duration
  (``started_at`` to ``finished_at``) of the single-host rounds: what one run costs with nothing
  of the fleet around it. The nominal per-run time, latency + records x interval, is printed too;
* record latency guest -> follower p50/p99 (and the part from the record's ``time``, stamped by
  the agent that received it from the guest, to the follower: in the fleet that is agent ->
  nats-server -> controller's projection -> SSE);
* per round: how long the POST took (verification, the job fact applied) and when the first run
  started after it (dispatch through the broker);
* CPU per record: utime + stime from /proc/PID/stat before and after a round, over the records
  the job journaled: the controller, the agents (summed; their simulated hosts are child processes
  and not counted), nats-server; on the single host, its agent.

Left out: the simulated hosts' CPU (a real Hyper-V host runs the guests); the followers and the
bench run in this process on the same cores as everything else, so they delay what they measure;
the guest clock is the machine's, so no clock skew; everything shares one machine and its loopback
(no network, no disk contention between hosts); the fleet's idle cost (heartbeats, placement)
counts into its CPU per record; other work on the machine (its load is printed).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_lab import PASSWORD, AgentHome, cpu_seconds, percentile, prepare_home, running_agent
from bench_followers import follow

from vmbusops.fleet.localfleet import LocalFleet
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


async def one_round(url: str, token: str, body: bytes, followers: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Submit the bundle ``body``, follow it with ``followers``, wait for its end; wall time, latencies, CPU."""
    got: dict[str, Any] = {"records": 0, "guest": [], "agent": [], "spans": {}}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
        started, posted = time.perf_counter(), time.time()
        r = await c.post("/v1/jobs", content=body, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        job_id = int(r.json()["job"]["id"])
        accepted = time.perf_counter() - started
        async with trio.open_nursery() as nursery:
            for _ in range(followers):
                nursery.start_soon(follow, url, token, job_id, got)
            while True:
                job = (await c.get(f"/v1/jobs/{job_id}")).json()["job"]
                if job["state"] not in ACTIVE:
                    wall = time.perf_counter() - started
                    break
                await trio.sleep(0.05)
        cpu = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
        runs = (await c.get(f"/v1/jobs/{job_id}/runs")).json()["runs"]
    durations = [
        seconds_of(x["finished_at"]) - seconds_of(x["started_at"]) for x in runs if x["started_at"] and x["finished_at"]
    ]
    errors = [f"{x['vm']} {x['state']}: {x['error']}" for x in runs if x["state"] != "success"]
    starts = [seconds_of(x["started_at"]) for x in runs if x["started_at"]]
    return {"wall": wall, "state": job["state"], "journaled": sum(x["records"] for x in runs), "cpu": cpu,
            "durations": durations, "errors": errors, "runs": len(runs), "accepted": accepted,
            "first_start": min(starts) - posted if starts else math.nan, **got}  # fmt: skip


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
        signer = AgentHome(home=root / "signer", token="", key=single.key)
        t0 = time.perf_counter()
        with LocalFleet(
            root / "fleet", lab_text=fleet_lab(args.agents, args.vms_per_host, args.latency_ms), key=single.key,
            heartbeat=1.0, host_ttl=10.0, lease_ttl=15.0,
            agent_config=f"[host]\nmax_sessions = {args.vms_per_host}\nmax_runspaces = {args.vms_per_host + 8}\n",
        ) as fleet, running_agent(single.home) as agent:  # fmt: skip
            print(f"  fleet up and every VM placed in {time.perf_counter() - t0:.1f} s")
            pids = {
                "controller": [fleet.controller_procs[0].pid], "agents": [p.pid for p in fleet.agents.values()],
                "nats": [pid_of(fleet.nats.config_path)],
            }  # fmt: skip
            results: dict[str, list[dict[str, Any]]] = {"fleet": [], "single": []}
            for r in range(args.rounds + 1):
                for side in ("fleet", "single"):
                    tag = f"bench-{side}-{r}"
                    if side == "fleet":
                        b = bundle_of(signer, tag, "vm*", text, args.concurrency)
                        out = trio.run(one_round, fleet.url, fleet.token, b.read_bytes(), args.followers, pids)
                    else:
                        b = bundle_of(signer, tag, "vm*", text, share)
                        out = trio.run(one_round, agent.url, single.token, b.read_bytes(), args.followers, {"agent": [agent.pid]})
                    warm = " (warm-up, not counted)" if r == 0 else ""
                    print(f"  round {r} {side}: {out['state']}, wall {out['wall']:.2f} s, {out['journaled']} records journaled, "
                          f"accepted in {out['accepted']:.2f} s, first run started {out['first_start']:.2f} s after the POST, "
                          f"load {os.getloadavg()[0]:.1f}{warm}")  # fmt: skip
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
    fl, sg = results["fleet"], results["single"]
    per_run = statistics.median(d for x in sg for d in x["durations"])
    ideal = waves * per_run
    f_wall = statistics.median(x["wall"] for x in fl)
    s_wall = statistics.median(x["wall"] for x in sg)
    print(f"\n  per-run time (median run duration, single host): {per_run:.2f} s (nominal {nominal:.2f} s; "
          f"fleet runs' median {statistics.median(d for x in fl for d in x['durations']):.2f} s)")
    print(f"  ideal = {waves} waves x {per_run:.2f} s = {ideal:.2f} s (nominal: {waves * nominal:.2f} s)")
    print(f"  wall, median of {len(fl)} rounds: fleet ({total} VMs) {f_wall:.2f} s = {f_wall / ideal:.2f} x ideal; "
          f"single host ({args.vms_per_host} VMs) {s_wall:.2f} s = {s_wall / ideal:.2f} x ideal; "
          f"fleet / single = {f_wall / s_wall:.2f}")  # fmt: skip
    print(f"    beyond the ideal, per wave: fleet {(f_wall - ideal) / waves:.2f} s, single host {(s_wall - ideal) / waves:.2f} s "
          f"(the POST, dispatch and the job's end included)")  # fmt: skip
    walls = {side: ", ".join(f"{x['wall']:.2f}" for x in xs) for side, xs in results.items()}
    print(f"    rounds: fleet {walls['fleet']}; single {walls['single']}")
    for side, xs in (("fleet (controller SSE)", fl), ("single host (agent SSE)", sg)):
        guest = [v for x in xs for v in x["guest"]]
        own = [v for x in xs for v in x["agent"]]
        got = [x["records"] for x in xs]
        print(f"  latency guest -> follower, {side}, {args.followers} followers: p50 {ms(guest, 50)} ms, "
              f"p99 {ms(guest, 99)} ms, max {ms(guest, 100)} ms; of it the receiving agent's timestamp -> follower: p50 "
              f"{ms(own, 50)} ms, p99 {ms(own, 99)} ms (follower-records per round {min(got)}..{max(got)})")  # fmt: skip
    for side, xs in (("fleet", fl), ("single host", sg)):
        keys = list(xs[0]["cpu"])
        parts = []
        for k in keys:
            per = statistics.median(x["cpu"][k] / x["journaled"] for x in xs if x["journaled"])
            parts.append(f"{k} {per * 1e6:.0f} us")
        print(f"  CPU per record journaled, {side}: {', '.join(parts)}")
    print(f"  goal wall within 1.2 x ideal: fleet {f_wall / ideal:.2f} x, {'met' if f_wall <= 1.2 * ideal else 'NOT met'}")
    p99 = percentile([v for x in fl for v in x["guest"]], 99) * 1000 if any(x["guest"] for x in fl) else float("nan")
    print(f"  goal p99 < 100 ms guest -> controller follower: {p99:.1f} ms, {'met' if p99 < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
