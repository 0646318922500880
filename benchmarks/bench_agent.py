"""The agent as a service: submissions accepted per second, and record latency to SSE followers.

    ./scripts/bench agent [--runs 100] [--followers 20] [--records 200] [--interval-ms 10]

A real ``vmbusops agent`` process on loopback over the simulator, with --runs VMs. --runs signed
bundles (one VM each) are submitted over HTTP at once; each run first sleeps a second (so the
followers are connected) and then writes --records records, one every --interval-ms, so all runs
stream at the same time. --followers SSE followers (one per job) measure, for every record, the
time from the agent receiving it from the guest's PowerShell pipeline (the record's ``time``) to
the follower parsing it off the socket. Goal: p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import tomli_w
import trio

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Bench!" + os.urandom(6).hex()


def prepare(home: Path, runs: int, records: int, interval_ms: int) -> tuple[list[Path], str]:
    os.environ["VMBUSOPS_HOME"] = str(home)
    from vmbusops.api.auth import Operation, PrincipalStore
    from vmbusops.bundle.build import build_bundle, sign_bundle
    from vmbusops.bundle.crypto import PrivateKey
    from vmbusops.bundle.manifest import StepKind
    from vmbusops.bundle.paths import trust_policy_path
    from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
    from vmbusops.credentials import CredentialStore, Secret

    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("*",), credentials=("lab-admin",), steps=frozenset(StepKind), threshold=1)
    save_trust_policy(
        TrustPolicy().with_key(TrustedKey(name="bench", public=key.public_key()), scope), trust_policy_path()
    )
    os.environ.setdefault("VMBUSOPS_CREDENTIAL_PASSPHRASE", "bench-" + os.urandom(4).hex())
    CredentialStore().set("lab-admin", "Administrator", Secret(PASSWORD))
    with PrincipalStore() as store:
        _, token = store.create_token(
            name="bench", operations=frozenset(Operation), vms=["*"], expires_at=None
        )
    script = (
        "Start-Sleep -Milliseconds 1000; "
        f'1..{records} | ForEach-Object {{ Write-Output "line $_"; Start-Sleep -Milliseconds {interval_ms} }}'
    )
    bundles = []
    for i in range(runs):
        src = home / "src" / f"b{i:03d}"
        src.mkdir(parents=True)
        (src / "bundle.toml").write_text(tomli_w.dumps({
            "name": f"bench-{i:03d}", "version": 1, "credential": "lab-admin",
            "targets": {"vms": [f"bench{i:03d}"]},
            "steps": [{"kind": "script", "name": "stream", "inline": script}],
        }))  # fmt: skip
        out = home / "src" / f"b{i:03d}.vmb"
        build_bundle(src, out)
        sign_bundle(out, key)
        bundles.append(out)
    lab = home / "lab.toml"
    lines = ["[host]", 'name = "HV-BENCH"', "session_open_ms = 0", "boot_seconds = 0.2", ""]
    for i in range(runs):
        lines += ["[[vm]]", f'name = "bench{i:03d}"', f'password = "{PASSWORD}"', ""]
    lab.write_text("\n".join(lines))
    (home / "config.toml").write_text(
        "[agent]\nsubmit_burst = 100000\nsubmit_rate_per_minute = 1000000\n"
        f'[sim]\nlab = "{lab}"\n[host]\nmax_runspaces = {max(64, runs + 8)}\n'
    )
    return bundles, token


async def follow(url: str, token: str, job_id: int, latencies: list[float], counts: list[int]) -> None:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=f"/v1/jobs/{job_id}/events", headers=[
        ("Host", parts.netloc), ("Authorization", f"Bearer {token}"), ("Accept", "text/event-stream")])  # fmt: skip
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    buffer = b""
    received = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 16))
                continue
            if isinstance(event, h11.Response):
                assert event.status_code == 200, event
                continue
            if not isinstance(event, h11.Data):
                break
            now = time.time()
            buffer += bytes(event.data)
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if block.startswith(b"id: ") and b"event: record" in block:
                    data = json.loads(block.split(b"data: ", 1)[1])
                    latencies.append(now - data["time"])
                    received += 1
                elif b"event: end" in block:
                    counts.append(received)
                    return
    finally:
        await stream.aclose()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench(url: str, token: str, bundles: list[Path], followers: int) -> dict[str, Any]:
    bodies = [b.read_bytes() for b in bundles]
    job_ids: list[int] = [0] * len(bodies)
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=60
    ) as c:
        started = time.perf_counter()
        latencies: list[float] = []
        counts: list[int] = []
        submitted_at: list[float] = []

        async def one(i: int, nursery: trio.Nursery) -> None:
            r = await c.post(
                "/v1/jobs", content=bodies[i], headers={"Content-Type": "application/octet-stream"}
            )
            assert r.status_code == 201, r.text
            job_ids[i] = r.json()["job"]["id"]
            submitted_at.append(time.perf_counter())
            if i < followers:
                nursery.start_soon(follow, url, token, job_ids[i], latencies, counts)

        async with trio.open_nursery() as nursery:
            for i in range(len(bodies)):
                nursery.start_soon(one, i, nursery)
        submit_seconds = max(submitted_at) - started
        total = time.perf_counter() - started
        with trio.move_on_after(120):
            while True:
                states = [(await c.get(f"/v1/jobs/{j}")).json()["job"]["state"] for j in job_ids]
                if not {"pending", "in-progress", "delayed"} & set(states):
                    break
                await trio.sleep(0.5)
        errors = []
        for j, state in zip(job_ids, states, strict=True):
            if state != "success":
                runs = (await c.get(f"/v1/jobs/{j}/runs")).json()["runs"]
                errors += [f"job {j}: {r['vm']} {r['state']}: {r['error']}" for r in runs]
    return {
        "submit_seconds": submit_seconds,
        "latencies": latencies,
        "counts": counts,
        "total": total,
        "states": states,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--followers", type=int, default=20)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--interval-ms", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmbusops-bench-agent-") as tmp:
        home = Path(tmp)
        bundles, token = prepare(home, args.runs, args.records, args.interval_ms)
        exe = str(Path(sys.executable).parent / "vmbusops")
        env = {**os.environ, "VMBUSOPS_HOME": str(home)}
        log = (home / "agent.log").open("wb")
        agent = subprocess.Popen([exe, "agent", "--listen", "127.0.0.1:0", "--log-level", "warning"],
                                 stdout=subprocess.PIPE, stderr=log, env=env)  # fmt: skip
        try:
            assert agent.stdout is not None
            url = json.loads(agent.stdout.readline())["listen"][0]
            result = trio.run(bench, url, token, bundles, args.followers)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            log.close()
    lat = [x * 1000 for x in result["latencies"]]
    expected = args.followers * (args.records + 1)  # + the pipeline's final state record
    print(f"agent bench: {args.runs} concurrent runs x {args.records} records every {args.interval_ms} ms, "
          f"{args.followers} SSE followers")  # fmt: skip
    print(f"  submissions accepted: {args.runs} in {result['submit_seconds']:.2f} s = "
          f"{args.runs / result['submit_seconds']:.0f}/s (verify + extract + journal + start, over HTTP)")  # fmt: skip
    print(f"  records at followers: {len(lat)} of {expected} expected "
          f"({'complete' if len(lat) == expected else 'INCOMPLETE'}), jobs: "
          f"{sum(s == 'success' for s in result['states'])}/{args.runs} success")  # fmt: skip
    print(f"  record latency guest->SSE follower: p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
          f"max {max(lat):.1f} ms  (goal p99 < 50 ms: {'met' if pct(lat, 99) < 50 else 'NOT met'})")  # fmt: skip
    for line in result["errors"][:5]:
        print(f"  not successful: {line}")


if __name__ == "__main__":
    main()
