"""./scripts/bench psrp - our PSRP client against pypsrp 1.0.0b1's, on the same simulator, in one run.

Prints ratios, never bare timings alone:
  * pipelines per second on a warm pool (ours / peer's)
  * verbose records per second streamed from a guest (ours / peer's)
  * our client's CPU cost per pipeline beside the wall time of starting a PowerShell-like child
    process and opening a runspace pool on it
  * record decoding: our fast path vs psrpcore's generic deserializer (same messages)
  * fan-out: exec over 200 guests, 250 ms guest latency, 50 at a time, vs the ideal 4 waves

Machine noise: every figure is the best of --repeat runs (default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode

from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.fanout import exec_in_guests
from vmbusops.psrp.client import Command
from vmbusops.sim.lab import DEFAULT_USERNAME, lab_admin_password, load_lab

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "peer" / "pypsrp_peer.py"


def peer_python() -> str | None:
    path = os.environ.get("VMBUSOPS_PEER_PYTHON") or str(ROOT / ".venv-peer" / "bin" / "python")
    return path if Path(path).exists() else None


def run_peer(*args: str, password: str) -> dict[str, float]:
    py = peer_python()
    assert py is not None
    env = dict(os.environ, VMBUSOPS_PEER_PASSWORD=password)
    out = subprocess.run(
        [py, str(PEER), sys.executable, *args], capture_output=True, text=True, env=env, check=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def credential() -> GuestCredential:
    lab = load_lab(None)
    return GuestCredential(DEFAULT_USERNAME, Secret(lab_admin_password(lab)))


async def ours_pipelines(count: int) -> float:
    async with open_host("sim", config=Config()) as host:
        await host.pool.run([[Command("Get-VM", {"Name": "web01"})]])
        start = time.perf_counter()
        for _ in range(count):
            await host.pool.run([[Command("Get-VM", {"Name": "web01"})]])
        return time.perf_counter() - start


async def ours_records(count: int) -> tuple[int, float]:
    script = f'1..{count} | ForEach-Object {{ Write-Verbose "LCM:  [ Start  Set      ]  [[File]f$_]" }}'
    async with open_host("sim", config=Config()) as host:
        start = time.perf_counter()
        records, _ = await host.run_in_guest("web01", script, credential())
        return sum(1 for r in records if r.record.stream == "verbose"), time.perf_counter() - start


async def our_cpu_per_pipeline(count: int) -> float:
    async with open_host("sim", config=Config()) as host:
        await host.pool.run([[Command("Get-VM", {"Name": "web01"})]])
        cpu0 = time.process_time()
        for _ in range(count):
            await host.pool.run([[Command("Get-VM", {"Name": "web01"})]])
        return (time.process_time() - cpu0) / count


async def child_start_cost() -> tuple[float, float]:
    start = time.perf_counter()
    proc = await trio.run_process([sys.executable, "-c", "pass"])
    bare = time.perf_counter() - start
    assert proc.returncode == 0
    start = time.perf_counter()
    async with open_host("sim", config=Config()):
        opened = time.perf_counter() - start
    return bare, opened


async def fan_out(vms: int, latency_ms: int, concurrency: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        lab_path = Path(tmp) / "lab.toml"
        lab_path.write_text(
            f'[host]\npassword_seed = "bench"\n\n[generate]\ncount = {vms}\nprefix = "bench"\n'
            f"latency_ms = {latency_ms}\n",
            encoding="utf-8",
        )
        lab = load_lab(lab_path)
        cred = GuestCredential(DEFAULT_USERNAME, Secret(lab_admin_password(lab)))
        names = [vm.name for vm in lab.vms]
        async with open_host("sim", config=Config(lab=str(lab_path)), max_runspaces=concurrency) as host:
            # Not timed: the simulator lays out each new guest's storage on first use and the
            # pool exchanges its session key on the first credential; neither recurs per wave.
            # A different script, so no message of the timed round has been seen before.
            await exec_in_guests(
                host, names, "Write-Output warm", cred, on_record=lambda r: None, max_concurrency=concurrency
            )
            start = time.perf_counter()
            outcomes = await exec_in_guests(
                host, names, "hostname", cred, on_record=lambda r: None, max_concurrency=concurrency
            )
            elapsed = time.perf_counter() - start
        failed = [n for n, o in outcomes.items() if not o.ok]
        assert not failed, f"fan-out failures: {failed[:3]}"
        ideal = -(-vms // concurrency) * latency_ms / 1000
        return elapsed, ideal


def best(values: list[float]) -> float:
    return min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", type=int, default=300)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        os.environ["VMBUSOPS_HOME"] = home
        password = lab_admin_password(load_lab(None))
        print(f"# PSRP benchmark: best of {args.repeat}, {os.cpu_count()} cores")

        ours_p = best([trio.run(ours_pipelines, args.pipelines) for _ in range(args.repeat)])
        ours_pps = args.pipelines / ours_p
        line = f"pipelines/s (warm pool, Get-VM): ours {ours_pps:8.0f}"
        if not args.skip_peer and peer_python():
            peer = best([run_peer("pipelines", str(args.pipelines), password=password)["seconds"]
                         for _ in range(args.repeat)])
            peer_pps = args.pipelines / peer
            line += f"   pypsrp 1.0.0b1 {peer_pps:8.0f}   ratio {ours_pps / peer_pps:5.2f}x"
        print(line)

        runs = [trio.run(ours_records, args.records) for _ in range(args.repeat)]
        got, secs = min(runs, key=lambda r: r[1])
        assert got == args.records, f"ours streamed {got} of {args.records} verbose records"
        ours_rps = got / secs
        line = f"verbose records/s streamed:      ours {ours_rps:8.0f}"
        if not args.skip_peer and peer_python():
            peer_runs = [run_peer("records", str(args.records), "web01", DEFAULT_USERNAME, password=password)
                         for _ in range(args.repeat)]
            peer_best = min(peer_runs, key=lambda r: r["seconds"])
            assert int(peer_best["records"]) == args.records
            peer_rps = peer_best["records"] / peer_best["seconds"]
            line += f"   pypsrp 1.0.0b1 {peer_rps:8.0f}   ratio {ours_rps / peer_rps:5.2f}x"
        print(line)

        cpu = best([trio.run(our_cpu_per_pipeline, args.pipelines) for _ in range(args.repeat)])
        starts = [trio.run(child_start_cost) for _ in range(args.repeat)]
        bare = best([s[0] for s in starts])
        opened = best([s[1] for s in starts])
        print(
            f"agent CPU per pipeline:          {cpu * 1e3:6.3f} ms   vs starting a bare Python child "
            f"{bare * 1e3:6.1f} ms ({bare / cpu:5.0f}x) and starting the host + opening a pool "
            f"{opened * 1e3:6.1f} ms ({opened / cpu:5.0f}x)"
        )

        print("record decoding (same bytes, results checked equal first):")
        bench_decode.main(5_000)

        fan = [trio.run(fan_out, 200, 250, 50) for _ in range(args.repeat)]
        elapsed = best([f[0] for f in fan])
        ideal = fan[0][1]
        print(f"fan-out 200 VMs x 250 ms, 50 at a time: {elapsed:5.2f}s vs ideal {ideal:4.2f}s "
              f"= {elapsed / ideal:4.2f}x (goal <= 1.15x)")


if __name__ == "__main__":
    main()
