"""A chaos soak: bundles through a real agent while a seeded schedule breaks things under it.

    ./scripts/soak [--minutes 10] [--seed 1] [--vms 8]

A real ``vmbusops agent`` on loopback over the simulated host, its home on a small tmpfs when this
machine lets us mount one (so the disk can really fill). For ``--minutes``, bundles are submitted
over HTTP (one VM each: numbered lines, then a ``done`` line; idempotent, with retries) while SSE
followers come and go, and a seeded schedule, every few seconds, does one of:

* ``agent-kill``: SIGKILL the agent, start it again (a new port);
* ``host-kill``: SIGKILL the agent's simulated Hyper-V host process;
* ``disk-full``: fill the home's filesystem with a ballast file for a few seconds, then free it;
* ``drop-followers``: close every SSE follower mid-stream.

Some VMs drop their PowerShell Direct session after a number of records (the lab's fault). Then
the agent is stopped, every interrupted job is resumed with ``vmbusops jobs resume``, and these
must hold, read from the journal and the replay store themselves:

* every accepted bundle has a job, and every 201 answered names a job of that bundle;
* every job is finished (after resuming what was interrupted);
* no record lost or repeated: each run's ``seq`` is 1..n without a gap, and each attempt of a step
  printed its lines in order, each once, up to where it stopped;
* no finished step ran twice: a successful step printed ``done`` in exactly one attempt;
* the agent answered ``/v1/health`` again after every break.

It prints what it survived. ``tests/soak/test_soak.py`` runs a short seeded version in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w
import trio

ROOT = Path(__file__).resolve().parents[2]
LINES = 30
ACTIONS = ("agent-kill", "host-kill", "disk-full", "drop-followers")


@dataclass
class Report:
    seconds: float = 0.0
    submitted: int = 0
    answered_201: int = 0
    refused: int = 0
    unanswered: int = 0
    actions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    jobs: int = 0
    resumed: int = 0
    states: dict[str, int] = field(default_factory=dict)
    records: int = 0
    restarts: int = 0
    health_gaps: int = 0
    longest_gap: float = 0.0
    disk_full_possible: bool = False
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        acts = ", ".join(f"{n} {a}" for a, n in self.actions.items())
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
        return [
            f"soak: {self.seconds:.0f} s; survived {acts}"
            + ("" if self.disk_full_possible else " (disk-full not possible here: no tmpfs)"),
            f"  bundles: {self.submitted} submitted, {self.answered_201} accepted (201 Created), "
            f"{self.refused} refused while something was broken (503 and the like), "
            f"{self.unanswered} unanswered (the agent was down or restarting)",
            f"  jobs: {self.jobs} ({states}); {self.resumed} resumed afterwards",
            f"  records journaled: {self.records}; health gaps: {self.health_gaps} "
            f"(longest {self.longest_gap:.1f} s)",
            f"  the agent stopped on its own {self.restarts} time(s) (a full disk stops it) and was started"
            " again, as its systemd unit does",
            "  invariants: " + ("all hold" if self.ok else f"{len(self.violations)} VIOLATED"),
            *(f"    {v}" for v in self.violations[:20]),
        ]


# ---------------------------------------------------------------------- the home
@contextlib.contextmanager
def soak_home(size_mib: int) -> Iterator[tuple[Path, bool]]:
    """A temporary home; on a tmpfs of ``size_mib`` when this process may mount one."""
    with tempfile.TemporaryDirectory(prefix="vmbusops-soak-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        mounted = False
        if os.geteuid() == 0 and sys.platform == "linux":
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(home)],
                capture_output=True,
                check=False,
            )
            mounted = done.returncode == 0
        try:
            yield home, mounted
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(home)], capture_output=True, check=False)


PASSWORD = "Soak!" + os.urandom(6).hex()


def prepare(home: Path, vms: int, rng: random.Random) -> tuple[str, Any]:
    """Trust, a credential, an API token, a lab (some VMs drop sessions), the agent's config."""
    os.environ["VMBUSOPS_HOME"] = str(home)
    os.environ.setdefault("VMBUSOPS_CREDENTIAL_PASSPHRASE", "soak-" + os.urandom(4).hex())
    from vmbusops.api.auth import Operation, PrincipalStore
    from vmbusops.bundle.crypto import PrivateKey
    from vmbusops.bundle.manifest import StepKind
    from vmbusops.bundle.paths import trust_policy_path
    from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
    from vmbusops.credentials import CredentialStore, Secret

    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("*",), credentials=("lab-admin",), steps=frozenset(StepKind), threshold=1)
    save_trust_policy(TrustPolicy().with_key(TrustedKey(name="soak", public=key.public_key()), scope), trust_policy_path())
    CredentialStore().set("lab-admin", "Administrator", Secret(PASSWORD))
    with PrincipalStore() as store:
        _, token = store.create_token(name="soak", operations=frozenset(Operation), vms=["*"], expires_at=None)
    lab = home / "lab.toml"
    lines = ["[host]", 'name = "HV-SOAK"', "session_open_ms = 20", "boot_seconds = 0.3", ""]
    for i in range(vms):
        lines += ["[[vm]]", f'name = "soak{i:02d}"', f'password = "{PASSWORD}"', "latency_ms = 5"]
        if i % 4 == 3:
            lines += ["[vm.faults]", f"session_drop_after_records = {rng.randint(5, LINES)}"]
        lines.append("")
    lab.write_text("\n".join(lines))
    (home / "config.toml").write_text(
        "[agent]\nsubmit_burst = 100000\nsubmit_rate_per_minute = 1000000\n"
        f'[sim]\nlab = "{lab}"\n[host]\nmax_runspaces = 64\n'
    )
    return token, key


def bundle(work: Path, key: Any, i: int, vm: str) -> bytes:
    """A signed bundle, built outside the home (whose disk the soak fills)."""
    from vmbusops.bundle.build import build_bundle, sign_bundle

    src = work / f"b{i:05d}"
    src.mkdir(parents=True)
    script = f'1..{LINES} | ForEach-Object {{ Write-Output "soak {i} line $_" }}; Write-Output "done {i}"'
    (src / "bundle.toml").write_text(
        tomli_w.dumps(
            {
                "name": f"soak-{i:05d}",
                "version": 1,
                "credential": "lab-admin",
                "targets": {"vms": [vm]},
                "steps": [
                    {
                        "kind": "script",
                        "name": "count",
                        "inline": script,
                        "idempotent": True,
                        "retry": {"attempts": 5, "backoff_seconds": 0.2, "backoff_factor": 1.5},
                    }
                ],
            }
        )
    )
    out = work / f"b{i:05d}.vmb"
    build_bundle(src, out)
    sign_bundle(out, key)
    data = out.read_bytes()
    out.unlink()
    return data


# ---------------------------------------------------------------------- the agent
class Agent:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        exe = str(Path(sys.executable).parent / "vmbusops")
        env = {**os.environ, "VMBUSOPS_HOME": str(self.home)}
        log = (self.home / "agent.log").open("ab")
        self.proc = subprocess.Popen(
            [exe, "agent", "--listen", "127.0.0.1:0", "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.forget()
            raise RuntimeError(f"the agent did not start: see {self.home / 'agent.log'}")
        self.url = json.loads(line)["listen"][0]

    def children(self) -> list[int]:
        if self.proc is None:
            return []
        found: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
        return found

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.forget()

    def forget(self) -> None:
        """Drop the process (it has ended): close our end of its output."""
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
            self.forget()


# ---------------------------------------------------------------------- the run
@dataclass
class Soak:
    home: Path
    token: str
    key: Any
    agent: Agent
    rng: random.Random
    vms: int
    report: Report
    accepted: dict[str, int] = field(default_factory=dict)  # bundle id -> job id from a 201
    followers: list[trio.CancelScope] = field(default_factory=list)
    nursery: trio.Nursery | None = None
    #: Held while the agent is being killed or started, so the service manager never starts a second one.
    lifecycle: trio.Lock = field(default_factory=trio.Lock)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.agent.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    async def submitter(self, until: float) -> None:
        i = 0
        while trio.current_time() < until:
            i += 1
            data = await trio.to_thread.run_sync(bundle, self.home.parent / "work", self.key, i, f"soak{self.rng.randrange(self.vms):02d}")
            self.report.submitted += 1
            try:
                async with self.client() as c:
                    r = await c.post("/v1/jobs", content=data, headers={"Content-Type": "application/octet-stream"})
            except httpx.HTTPError:
                self.report.unanswered += 1
            else:
                if r.status_code == 201:
                    self.report.answered_201 += 1
                    job = r.json()["job"]
                    self.accepted[job["bundle_id"]] = job["id"]
                    if self.nursery is not None and self.rng.random() < 0.3:
                        self.nursery.start_soon(self.follow, job["id"])
                else:
                    self.report.refused += 1
            await trio.sleep(self.rng.uniform(0.05, 0.3))

    async def follow(self, job_id: int) -> None:
        with trio.CancelScope() as scope:
            self.followers.append(scope)
            with contextlib.suppress(httpx.HTTPError):
                async with self.client() as c, c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
                    async for _ in r.aiter_bytes():
                        pass

    async def health(self, until: float) -> None:
        down_since: float | None = None
        while trio.current_time() < until + 30:
            ok = False
            with contextlib.suppress(httpx.HTTPError):
                async with self.client() as c:
                    ok = (await c.get("/v1/health")).status_code == 200
            now = trio.current_time()
            if not ok and down_since is None:
                down_since = now
            elif ok and down_since is not None:
                self.report.health_gaps += 1
                self.report.longest_gap = max(self.report.longest_gap, now - down_since)
                down_since = None
            if ok and now >= until:
                return
            await trio.sleep(0.25)
        self.report.violations.append(f"the agent did not answer /v1/health for {trio.current_time() - (down_since or 0):.0f} s")

    async def service_manager(self, until: float) -> None:
        """What systemd does for the agent (``Restart=on-failure``, ``RestartSec=1``): start it again
        when it exits, and again a second later when it could not start (say, the disk is full)."""
        while True:  # until the soak is over (its nursery is cancelled)
            await trio.sleep(1.0)
            async with self.lifecycle:
                if self.agent.exited():
                    self.report.restarts += 1
                    self.agent.forget()
                if self.agent.proc is None:
                    with contextlib.suppress(RuntimeError):
                        await trio.to_thread.run_sync(self.agent.start)

    async def chaos(self, until: float, mounted: bool) -> None:
        while True:
            await trio.sleep(self.rng.uniform(2.0, 5.0))
            if trio.current_time() >= until:
                return
            action = self.rng.choice([a for a in ACTIONS if mounted or a != "disk-full"])
            self.report.actions[action] += 1
            if action == "agent-kill":
                async with self.lifecycle:
                    self.agent.kill()
                    await trio.sleep(self.rng.uniform(0.1, 1.0))
                    with contextlib.suppress(RuntimeError):  # not starting: the service manager retries
                        await trio.to_thread.run_sync(self.agent.start)
            elif action == "host-kill":
                for pid in self.agent.children():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            elif action == "disk-full":
                await trio.to_thread.run_sync(fill, self.home)
                await trio.sleep(self.rng.uniform(1.0, 3.0))
                (self.home / "ballast").unlink(missing_ok=True)
            else:
                for scope in self.followers:
                    scope.cancel()
                self.followers.clear()

    async def run(self, seconds: float, mounted: bool) -> None:
        until = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.chaos, until, mounted)
            nursery.start_soon(self.health, until)
            nursery.start_soon(self.service_manager, until)
            await self.submitter(until)
            deadline = trio.current_time() + 120
            while trio.current_time() < deadline:
                # The chaos goes on meanwhile: each look goes to the agent's port of the moment, and
                # an answer that is not the agent's JSON (a killed agent's port, taken by another
                # process) is no answer.
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    async with self.client() as c:
                        if (await c.get("/v1/health")).json().get("jobs_running", 1) == 0:
                            break
                await trio.sleep(0.5)
            for scope in self.followers:
                scope.cancel()
            await self.came_back()
            nursery.cancel_scope.cancel()

    async def came_back(self) -> None:
        """After the last break, a new bundle is accepted and runs to success: the agent healed."""
        data = await trio.to_thread.run_sync(bundle, self.home.parent / "work", self.key, 99_999, "soak00")
        self.report.submitted += 1
        r: httpx.Response | None = None
        async with self.client() as c:
            with trio.move_on_after(60):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        r = await c.post("/v1/jobs", content=data, headers={"Content-Type": "application/octet-stream"})
                        if r.status_code == 201:
                            break
                    await trio.sleep(1.0)
            if r is None or r.status_code != 201:
                said = "no answer" if r is None else f"{r.status_code} {r.text[:200]}"
                self.report.violations.append(f"after the chaos, a new bundle is still refused: {said}")
                return
            self.report.answered_201 += 1
            job = r.json()["job"]
            self.accepted[job["bundle_id"]] = job["id"]
            state = "pending"
            with trio.move_on_after(60):
                while state in ("pending", "delayed", "in-progress"):
                    await trio.sleep(0.5)
                    with contextlib.suppress(httpx.HTTPError):
                        state = (await c.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            if state != "success":
                self.report.violations.append(f"after the chaos, a new job ended {state}, not success")


def fill(home: Path) -> None:
    """Fill the filesystem under ``home`` to the last byte."""
    with contextlib.suppress(OSError), (home / "ballast").open("wb") as out:
        chunk = b"\0" * (1 << 20)
        while True:
            out.write(chunk)
            out.flush()


# ---------------------------------------------------------------------- the verdict
def resume_interrupted(home: Path, report: Report) -> None:
    exe = str(Path(sys.executable).parent / "vmbusops")
    env = {**os.environ, "VMBUSOPS_HOME": str(home)}
    db = sqlite3.connect(home / "journal" / "journal.sqlite")
    ids = [int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE state IN ('pending', 'in-progress', 'interrupted')")]
    db.close()
    for job_id in ids:
        done = subprocess.run([exe, "jobs", "resume", str(job_id)], capture_output=True, env=env, check=False, timeout=300)
        report.resumed += 1
        if done.returncode not in (0, 1):
            report.violations.append(f"jobs resume {job_id} exited {done.returncode}: {done.stderr.decode()[-300:]}")


def check(home: Path, soak: Soak) -> None:
    from vmbusops.engine import journal_records

    report = soak.report
    journal = sqlite3.connect(home / "journal" / "journal.sqlite")
    replay = sqlite3.connect(home / "bundles" / "accepted.sqlite")
    jobs = {r[0]: (r[1], r[2]) for r in journal.execute("SELECT id, bundle_id, state FROM jobs")}
    by_bundle = {b: j for j, (b, _) in jobs.items()}
    report.jobs = len(jobs)
    for _, state in jobs.values():
        report.states[state] = report.states.get(state, 0) + 1
        if state in ("pending", "in-progress", "delayed", "interrupted"):
            report.violations.append(f"a job is still {state} after resuming")
    # A row still held is a reservation whose process was killed before it made the job: by
    # design no acceptance (the bundle may be sent again), and its submitter never had a 201.
    for (bundle_id,) in replay.execute("SELECT id FROM accepted WHERE holder_pid IS NULL"):
        if bundle_id not in by_bundle:
            report.violations.append(f"bundle {bundle_id} was accepted but has no job")
    for bundle_id, job_id in soak.accepted.items():
        if jobs.get(job_id, ("", ""))[0] != bundle_id:
            report.violations.append(f"201 named job {job_id} for bundle {bundle_id}, the journal disagrees")
    stored = [r for job_id in jobs for r in journal_records.read(journal, job_id)]
    seqs: dict[int, list[int]] = {}
    for r in stored:
        seqs.setdefault(r[2], []).append(r[3])
    for run_id, numbers in seqs.items():
        report.records += len(numbers)
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            report.violations.append(f"run {run_id}: {len(numbers)} records numbered up to {max(numbers)} (a gap)")
    lines: dict[tuple[int, str | None, int], list[str]] = {}
    for _, _, run_id, _, step, attempt, stream, _, content in sorted(stored, key=lambda r: (r[2], r[3])):
        value = json.loads(content).get("value") if stream == "output" else None
        if isinstance(value, str):
            lines.setdefault((run_id, step, attempt), []).append(value)
    # The attempts of each step whose script ran to its end ("done"). A step is idempotent here, so
    # an attempt whose end the agent never saw (killed, or its host killed, after "done" and before
    # the outcome was journaled) is rightly run again; what must never happen is an attempt after
    # the one that succeeded: the step's last attempt is the one that finished, and no later one ran.
    done_attempts: dict[tuple[int, str | None], set[int]] = {}
    for (run_id, step, attempt), got in lines.items():
        numbers = [int(t.rsplit(" ", 1)[1]) for t in got if " line " in t]
        if numbers != list(range(1, len(numbers) + 1)):
            report.violations.append(f"run {run_id} step {step}: lines {numbers[:8]}... not 1..n once each")
        if any(t.startswith("done ") for t in got):
            done_attempts.setdefault((run_id, step), set()).add(attempt)
    for run_id, name, state, attempts in journal.execute("SELECT run_id, name, state, attempts FROM steps"):
        done = sorted(done_attempts.get((run_id, name), set()))
        if state == "success" and (not done or done[-1] != attempts):
            report.violations.append(
                f"run {run_id} step {name} succeeded in attempt {attempts}, but finished in attempts {done}"
            )
    journal.close()
    replay.close()


def run_soak(seconds: float, *, seed: int = 1, vms: int = 8, size_mib: int = 256) -> Report:
    rng = random.Random(seed)
    report = Report()
    started = time.monotonic()
    with soak_home(size_mib) as (home, mounted):
        report.disk_full_possible = mounted
        token, key = prepare(home, vms, rng)
        agent = Agent(home)
        agent.start()
        soak = Soak(home=home, token=token, key=key, agent=agent, rng=rng, vms=vms, report=report)
        try:
            trio.run(soak.run, seconds, mounted)
        finally:
            agent.stop()
        (home / "ballast").unlink(missing_ok=True)
        resume_interrupted(home, report)
        check(home, soak)
    report.seconds = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vms", type=int, default=8)
    args = parser.parse_args()
    report = run_soak(args.minutes * 60, seed=args.seed, vms=args.vms)
    print("\n".join(report.lines()))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
