"""A whole simulated fleet on loopback, as real processes: the embedded default of fleet mode.

:class:`LocalFleet` starts what a provider runs, on this machine: a ``nats-server`` (JetStream, a
free loopback port, its store in the fleet's directory; with ``per_host_users`` each host connects
as its own NATS user with its own subjects only), one or more controllers (``vmbusops fleet
serve``) and one agent per simulated host (``vmbusops agent --host sim:HOST --fleet ...``). The
hosts are those of one lab file with several ``[[hosts]]``; every agent's simulator shares the
lab's state directory, so a live migration or a failed node (:meth:`LocalFleet.migrate`,
:meth:`LocalFleet.fail_host`) is seen by every host at once, as in a failover cluster.

Each process has a ``VMBUSOPS_HOME`` of its own: a trust policy that trusts the fleet's one
signing key (:meth:`LocalFleet.sign_bundle` signs with it), and on the controllers an API token
with every operation (:attr:`LocalFleet.token`). The guest credential is the lab's own
(``lab-admin``, resolved from the lab by every simulated host). Each process's stderr (its JSON
log) is kept in ``DIRECTORY/logs/NAME.log`` for diagnosis (:meth:`LocalFleet.logs`).

Used by ``vmbusops demo --fleet``, ``./scripts/bench fleet`` and the fleet's end-to-end tests::

    with LocalFleet(tmp, lab_text=LAB) as fleet:        # starts everything, waits until placed
        bundle = fleet.sign_bundle(["web*"], [{"kind": "script", "name": "s", "inline": "hostname"}])
        ...  POST bundle to fleet.url + "/v1/jobs" with "Authorization: Bearer " + fleet.token
        fleet.migrate("web01", "HV-B")
        fleet.kill_agent("HV-A"); fleet.start_agent("HV-A")

Leaving the ``with`` block (normally or on an error) stops every process it started: SIGTERM,
then SIGKILL for one that has not exited within a few seconds. The methods block; from trio, call
them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.engine.journal import Journal
from vmbusops.fleet.natsserver import NatsServer, fleet_permissions

#: The NATS user of the controllers when hosts have users of their own.
CONTROLLER_USER = "controller"
#: How long a process may take to say it is ready (a loaded two-core machine starting twenty).
READY_SECONDS = 120.0


class LocalFleetError(RuntimeError):
    """A process of the local fleet did not start, or the fleet did not come together in time."""


@dataclass
class FleetProcess:
    """One process of the fleet: a controller or an agent."""

    name: str
    home: Path
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    url: str = ""
    #: A controller's API token (the fleet's); empty for an agent.
    token: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal it and wait; SIGKILL when it has not exited within ``timeout``."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL: what a crashed host or a power cut does to the process."""
        self.stop(signal.SIGKILL)

    def journal(self) -> Journal:
        """The process's own journal, read only (an agent's local jobs; a controller's projection)."""
        return Journal(self.home / "journal" / "journal.sqlite", readonly=True)

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        """An async HTTP client of this process's API (a controller's: with the fleet's token)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def vmbusops_command() -> list[str]:
    """How to start ``vmbusops`` as this interpreter would (the console script beside it, else -m)."""
    script = Path(sys.executable).parent / "vmbusops"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmbusops"]


@dataclass
class LocalFleet:
    """A nats-server, controllers and one agent per host of a multi-host lab, on loopback.

    ``lab_text``: the lab file (with ``[[hosts]]``); ``hosts``: the hosts that get an agent
    (default: every host of the lab), each started by :meth:`start` unless ``start_agents`` is
    False (then :meth:`start_agent` starts them one by one); ``controllers``: how many
    controllers :meth:`start` starts (0: :meth:`start_controller` does). ``nats_url``: use that
    nats-server (the caller's, left running on exit) instead of starting one. ``agent_config`` / ``controller_config``: extra TOML text
    for each process's ``config.toml`` (``[host] max_sessions``, ...). ``canary``: the
    controllers' ``--canary``. ``log_level``: every process's
    ``--log-level`` (their logs are JSON lines on stderr, kept in ``logs/NAME.log``).
    """

    directory: Path
    lab_text: str
    hosts: Sequence[str] | None = None
    controllers: int = 1
    start_agents: bool = True
    nats_url: str | None = None
    per_host_users: bool = False
    host_ttl: float = 2.0
    lease_ttl: float = 3.0
    heartbeat: float = 0.25
    canary: int = 0
    agent_config: str = ""
    controller_config: str = ""
    controller_args: Sequence[str] = ()
    wait_placed: bool = True
    log_level: str = "warning"
    env: Mapping[str, str] = field(default_factory=dict)
    key: PrivateKey = field(default_factory=PrivateKey.generate)

    nats: NatsServer | None = field(init=False, default=None)
    agents: dict[str, FleetProcess] = field(init=False, default_factory=dict)
    controller_procs: list[FleetProcess] = field(init=False, default_factory=list)
    token: str = field(init=False, default="")
    _everyone: list[FleetProcess] = field(init=False, default_factory=list)
    _passwords: dict[str, str] = field(init=False, default_factory=dict)
    _bundles: int = field(init=False, default=0)

    # ------------------------------------------------------------------ set-up
    def __post_init__(self) -> None:
        from vmbusops.sim.lab import parse_lab

        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lab_path = self.directory / "fleet-lab.toml"
        self.lab_path.write_text(self.lab_text, encoding="utf-8")
        self.lab = parse_lab(self.lab_text, source=str(self.lab_path))
        self.host_names = list(self.hosts) if self.hosts is not None else [h.name for h in self.lab.hosts]
        self.state_dir = self.directory / "sim-state"
        self.logs_dir = self.directory / "logs"
        for d in (self.state_dir, self.logs_dir, self.directory / "bundles"):
            d.mkdir(exist_ok=True)

    def __enter__(self) -> LocalFleet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """nats-server, then every agent and controller (started together, then waited for),
        then (``wait_placed``) until the controller shows every VM on its host, alive."""
        if self.nats_url is not None:
            if self.per_host_users:
                raise LocalFleetError("per-host users need the local fleet's own nats-server (no nats_url)")
        elif self.per_host_users:
            self._passwords = {name: secrets.token_hex(16) for name in [CONTROLLER_USER, *self.host_names]}
            self.nats = NatsServer(
                self.directory / "nats", users=self._passwords,
                permissions=fleet_permissions(CONTROLLER_USER, self.host_names),
            )  # fmt: skip
        else:
            self.nats = NatsServer(self.directory / "nats")
        if self.nats is not None:
            self.nats.start()
            self.nats_url = self.nats.url
        # Controllers first: the first one makes the fleet's streams and buckets.
        started = [self._spawn_controller(f"ctl{i + 1}", ()) for i in range(self.controllers)]
        started += [self._spawn_agent(host, None) for host in (self.host_names if self.start_agents else ())]
        for proc in started:
            self._wait_ready(proc)
        if self.wait_placed and self.controller_procs and self.start_agents:
            self.wait_until_placed()

    def _home(self, name: str) -> Path:
        """A VMBUSOPS_HOME that trusts the fleet's key for every VM and step."""
        from vmbusops.bundle.manifest import StepKind
        from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
        from vmbusops.home import private_dir

        home = self.directory / f"home-{name}"
        if not (home / "trust.toml").exists():
            private_dir(home)
            scope = Scope(keys=(), vms=("*",), credentials=("*",), steps=frozenset(StepKind), threshold=1)
            policy = TrustPolicy().with_key(TrustedKey(name="local-fleet", public=self.key.public_key()), scope)
            save_trust_policy(policy, home / "trust.toml")
        return home

    def _env(self, home: Path, user: str | None) -> dict[str, str]:
        env = {
            **os.environ, **self.env, "VMBUSOPS_HOME": str(home), "VMBUSOPS_LAB": str(self.lab_path),
            "VMBUSOPS_SIM_STATE": str(self.state_dir),
        }  # fmt: skip
        env.pop("VMBUSOPS_NATS_PASSWORD", None)
        if user is not None:
            env["VMBUSOPS_NATS_PASSWORD"] = self._passwords[user]
        return env

    def _spawn(self, name: str, home: Path, args: list[str], user: str | None) -> FleetProcess:
        ready = home / "ready.json"
        ready.unlink(missing_ok=True)
        log = self.logs_dir / f"{name}.log"
        with log.open("ab") as err:
            popen = subprocess.Popen(
                [*vmbusops_command(), *args, "--ready-file", str(ready)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, env=self._env(home, user), start_new_session=True,
            )  # fmt: skip
        proc = FleetProcess(name=name, home=home, args=args, log=log, popen=popen)
        self._everyone.append(proc)
        return proc

    def _wait_ready(self, proc: FleetProcess, timeout: float = READY_SECONDS) -> None:
        ready = proc.home / "ready.json"
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.popen.poll() is not None:
                raise LocalFleetError(
                    f"{proc.name} exited with {proc.popen.returncode} before it was ready; its log "
                    f"{proc.log} ends: {proc.log_tail(1500)}"
                )
            if time.monotonic() > deadline:
                raise LocalFleetError(f"{proc.name} was not ready within {timeout:g} s (log: {proc.log})")
            time.sleep(0.05)
        listen = str(json.loads(ready.read_text(encoding="utf-8"))["listen"][0])
        proc.url = listen if listen.startswith("http") else "http://" + listen

    def _user_args(self, user: str) -> list[str]:
        return [user] if self.per_host_users else []

    def _spawn_agent(self, host: str, nats_url: str | None) -> FleetProcess:
        home = self._home(host)
        (home / "config.toml").write_text(
            f"[fleet]\nheartbeat_seconds = {self.heartbeat}\nhost_ttl_seconds = {self.host_ttl}\n"
            + self.agent_config, encoding="utf-8",
        )  # fmt: skip
        args = ["agent", "--host", f"sim:{host}", "--listen", "127.0.0.1:0", "--log-level", self.log_level,
                "--fleet", nats_url or self.broker_url, "--fleet-host", host]  # fmt: skip
        spec = self.lab.find_host(host)
        if spec is not None and spec.cluster:
            args += ["--cluster", spec.cluster]
        if self.per_host_users:
            args += ["--fleet-user", host]
        proc = self._spawn(f"agent-{host}", home, args, host if self.per_host_users else None)
        self.agents[host] = proc
        return proc

    def _spawn_controller(self, name: str, extra: Sequence[str]) -> FleetProcess:
        from vmbusops.api.auth import Operation, PrincipalStore
        from vmbusops.home import private_dir

        home = self._home(name)
        principals = home / "agent" / "principals.sqlite"
        if not principals.exists():
            private_dir(principals.parent)
            if self.controller_procs:
                # One token for every controller: a client goes on against the standby unchanged.
                shutil.copyfile(self.controller_procs[0].home / "agent" / "principals.sqlite", principals)
                principals.chmod(0o600)
            else:
                with PrincipalStore(principals) as store:
                    _, self.token = store.create_token(
                        name="local-fleet", operations=frozenset(Operation), vms=["*"], expires_at=None
                    )
        (home / "config.toml").write_text(
            "[agent]\nsubmit_burst = 100000\nsubmit_rate_per_minute = 1000000\n" + self.controller_config,
            encoding="utf-8",
        )
        args = ["fleet", "serve", "--nats", self.broker_url, "--listen", "127.0.0.1:0", "--id", name,
                "--log-level", self.log_level, "--canary", str(self.canary), "--host-ttl", str(self.host_ttl),
                "--lease-ttl", str(self.lease_ttl), *self.controller_args, *extra]  # fmt: skip
        if self.per_host_users:
            args += ["--nats-user", CONTROLLER_USER]
        proc = self._spawn(name, home, args, CONTROLLER_USER if self.per_host_users else None)
        proc.token = self.token
        self.controller_procs.append(proc)
        return proc

    # ------------------------------------------------------------------ the fleet as a client sees it
    @property
    def url(self) -> str:
        """The API of the first controller still running (the active one unless it was killed)."""
        for proc in self.controller_procs:
            if proc.alive():
                return proc.url
        raise LocalFleetError("no controller of the local fleet is running")

    @property
    def broker_url(self) -> str:
        """The fleet's nats-server: its own, or the one it was given."""
        if self.nats_url is None:
            raise LocalFleetError("the local fleet has no nats-server yet: start it first")
        return self.nats_url

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client of the controller's API, with the fleet's token."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout)

    def vms(self) -> list[dict[str, Any]]:
        """``GET /v1/vms`` through the controller: each VM with its host and whether it is alive."""
        with self.client() as c:
            response = c.get("/v1/vms")
            response.raise_for_status()
            listed: list[dict[str, Any]] = response.json()["vms"]
            return listed

    def expected_placement(self) -> dict[str, str]:
        """VM -> host as the lab's shared state has it now, for the hosts that have an agent."""
        from vmbusops.sim.cluster import placements

        store = self._store()
        try:
            found, down = placements(store)
        finally:
            store.close()
        return {p.vm: p.host for p in found if p.host in self.agents and p.host not in down}

    def wait_until_placed(self, where: Mapping[str, str] | None = None, *, timeout: float = READY_SECONDS) -> None:
        """Until the controller shows each VM of ``where`` (default: the lab's state now) on its
        host, alive."""
        wanted = dict(where) if where is not None else self.expected_placement()
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            try:
                seen = {v["vm"]: v["host"] for v in self.vms() if v["alive"]}
            except httpx.HTTPError:
                pass
            if all(seen.get(vm) == host for vm, host in wanted.items()):
                return
            if time.monotonic() > deadline:
                missing = sorted(vm for vm, host in wanted.items() if seen.get(vm) != host)
                raise LocalFleetError(
                    f"{len(missing)} VM(s) not placed within {timeout:g} s (first: {', '.join(missing[:5])}); "
                    f"logs in {self.logs_dir}"
                )
            time.sleep(0.1)

    def sign_bundle(
        self,
        vms: Sequence[str],
        steps: Sequence[Mapping[str, Any]],
        *,
        execution: Mapping[str, Any] | None = None,
        name: str = "local-fleet",
        credential: str = "lab-admin",
    ) -> Path:
        """A bundle over ``vms`` (names or patterns) with ``steps``, signed with the fleet's key."""
        from vmbusops.bundle.build import build_bundle, sign_bundle

        self._bundles += 1
        source = self.directory / "bundles" / f"{name}-{self._bundles}-{uuid.uuid4().hex[:6]}"
        source.mkdir(parents=True)
        doc: dict[str, Any] = {
            "name": name, "version": 1, "credential": credential, "targets": {"vms": list(vms)},
            "steps": [dict(s) for s in steps],
        }  # fmt: skip
        if execution is not None:
            doc["execution"] = dict(execution)
        (source / "bundle.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
        out = source.with_suffix(".vmb")
        build_bundle(source, out)
        sign_bundle(out, self.key)
        return out

    def submit(self, bundle: Path) -> dict[str, Any]:
        """``POST /v1/jobs`` as ``vmbusops submit --agent URL`` does; the job as the API answers."""
        with self.client(timeout=120) as c:
            response = c.post(
                "/v1/jobs", content=bundle.read_bytes(), headers={"Content-Type": "application/octet-stream"}
            )
        if response.status_code != 201:
            raise LocalFleetError(f"the controller refused the job: HTTP {response.status_code}: {response.text[:500]}")
        job: dict[str, Any] = response.json()["job"]
        return job

    # ------------------------------------------------------------------ faults
    def kill_agent(self, host: str) -> None:
        """SIGKILL the agent of ``host`` (a crashed host agent; its VMs run on)."""
        self.agents[host].kill()

    def start_agent(self, host: str, nats_url: str | None = None) -> FleetProcess:
        """Start (again) the agent of ``host``: a new process, so a new boot id (``nats_url``: reach
        the broker there instead, a relay say)."""
        old = self.agents.get(host)
        if old is not None and old.alive():
            raise LocalFleetError(f"the agent of {host} is running")
        proc = self._spawn_agent(host, nats_url)
        self._wait_ready(proc)
        return proc

    restart_agent = start_agent

    def kill_controller(self, index: int = 0) -> None:
        """SIGKILL a controller (the first: the active one, unless the lease moved)."""
        self.controller_procs[index].kill()

    def start_controller(self, name: str | None = None, *extra: str) -> FleetProcess:
        """One more controller (a standby while another holds the lease); ``extra``: more
        ``fleet serve`` options (the last of a repeated one wins). A name already used starts that
        controller again, on its home and journal."""
        proc = self._spawn_controller(name or f"ctl{len(self.controller_procs) + 1}", extra)
        self._wait_ready(proc)
        return proc

    def _store(self) -> Any:
        from vmbusops.sim.state import HostStore

        return HostStore(self.lab, self.state_dir)

    def migrate(self, vm: str, host: str) -> Any:
        """Live-migrate ``vm`` to ``host`` (a node of its cluster), as ``vmbusops lab migrate``."""
        from vmbusops.sim.cluster import migrate_vm

        store = self._store()
        try:
            return migrate_vm(store, vm, host)
        finally:
            store.close()

    def fail_host(self, host: str) -> list[Any]:
        """The node dies: its VMs fail over to the other nodes of its cluster and restart."""
        from vmbusops.sim.cluster import fail_host

        store = self._store()
        try:
            return fail_host(store, host)
        finally:
            store.close()

    def restore_host(self, host: str) -> list[Any]:
        from vmbusops.sim.cluster import restore_host

        store = self._store()
        try:
            return restore_host(store, host)
        finally:
            store.close()

    # ------------------------------------------------------------------ shutdown, diagnosis
    def close(self) -> None:
        """Stop every process this fleet started, agents and controllers together, then NATS."""
        running = [p for p in self._everyone if p.alive()]
        for proc in running:
            try:
                proc.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15.0
        for proc in running:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if self.nats is not None:
            self.nats.stop()

    def logs(self, chars: int = 3000) -> str:
        """The end of every process's log, for a failure's report."""
        return "\n".join(f"--- {p.name} (pid {p.pid}, {p.log})\n{p.log_tail(chars)}" for p in self._everyone)


__all__ = ["CONTROLLER_USER", "FleetProcess", "LocalFleet", "LocalFleetError"]
