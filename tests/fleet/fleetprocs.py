"""A fleet of real processes for end-to-end tests: a nats-server (the test's fixture), controllers
(``vmbusops fleet serve``) and agents (``vmbusops agent --fleet``) over one simulated cluster
lab whose state they share, each process with its own VMBUSOPS_HOME."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from tests.builders import PASSWORD
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.api.auth import Operation, PrincipalStore
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.engine.journal import Journal

VMBUSOPS = str(Path(sys.executable).parent / "vmbusops")
HOSTS = ("HV-A", "HV-B", "HV-C")

LAB = """
[host]
boot_seconds = 0.5
password_seed = "fleet-e2e"

[[hosts]]
name = "HV-A"
cluster = "CL1"
[[hosts]]
name = "HV-B"
cluster = "CL1"
[[hosts]]
name = "HV-C"
"""


def lab_text(vms: dict[str, str]) -> str:
    """``vms``: VM name -> the host that owns it at first."""
    return LAB + "".join(
        f'\n[[vm]]\nname = "{vm}"\nhost = "{host}"\nusername = "Administrator"\npassword = "{PASSWORD}"\n'
        for vm, host in vms.items()
    )


@contextmanager
def home_env(home: Path) -> Iterator[None]:
    old = os.environ.get("VMBUSOPS_HOME")
    os.environ["VMBUSOPS_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            del os.environ["VMBUSOPS_HOME"]
        else:
            os.environ["VMBUSOPS_HOME"] = old


@dataclass
class Proc:
    name: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    token: str = ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def journal(self) -> Journal:
        return Journal(self.home / "journal" / "journal.sqlite", readonly=True)

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout)


@dataclass
class FleetProcs:
    tmp: Path
    nats_url: str
    vms: dict[str, str]
    host_ttl: float = 5.0
    lease_ttl: float = 3.0
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    procs: list[Proc] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)
    controllers: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lab = self.tmp / "fleet-lab.toml"
        self.lab.write_text(lab_text(self.vms), encoding="utf-8")
        self.state = self.tmp / "sim-state"
        self.state.mkdir(exist_ok=True)
        self.bundles = self.tmp / "bundles"
        self.bundles.mkdir(exist_ok=True)

    def env(self, home: Path) -> dict[str, str]:
        return {
            **os.environ, "VMBUSOPS_HOME": str(home), "VMBUSOPS_LAB": str(self.lab),
            "VMBUSOPS_SIM_STATE": str(self.state),
        }  # fmt: skip

    def _home(self, name: str) -> Path:
        home = self.tmp / f"home-{name}"
        if not home.exists():
            home.mkdir()
            with home_env(home):
                trust_and_credential(self.key)
        return home

    def _start(self, name: str, home: Path, args: list[str]) -> Proc:
        logpath = self.tmp / f"{name}.log"
        with logpath.open("ab") as err:
            process = subprocess.Popen(
                [VMBUSOPS, *args], stdout=subprocess.PIPE, stderr=err, env=self.env(home), start_new_session=True
            )
        proc = Proc(name=name, home=home, process=process, log=logpath)
        self.procs.append(proc)
        proc.url = _wait_ready(proc)
        return proc

    def start_agent(self, host: str, nats_url: str | None = None) -> Proc:
        home = self._home(host)
        (home / "config.toml").write_text(
            f"[fleet]\nheartbeat_seconds = 0.2\nhost_ttl_seconds = {self.host_ttl}\n", encoding="utf-8"
        )
        proc = self._start(host, home, [
            "agent", "--host", f"sim:{host}", "--listen", "127.0.0.1:0", "--fleet", nats_url or self.nats_url,
            "--fleet-host", host,
        ])  # fmt: skip
        self.agents[host] = proc
        return proc

    def start_controller(self, name: str, *extra: str) -> Proc:
        home = self._home(name)
        fresh = not (home / "tokens-made").exists()
        if fresh:
            with home_env(home), PrincipalStore() as store:
                _, token = store.create_token(name="e2e", operations=frozenset(Operation), vms=["*"], expires_at=None)
            (home / "tokens-made").write_text(token, encoding="utf-8")
        proc = self._start(name, home, [
            "fleet", "serve", "--nats", self.nats_url, "--listen", "127.0.0.1:0", "--id", name,
            "--host-ttl", str(self.host_ttl), "--lease-ttl", str(self.lease_ttl), *extra,
        ])  # fmt: skip
        proc.token = (home / "tokens-made").read_text(encoding="utf-8")
        self.controllers.append(proc)
        return proc

    def bundle(self, vms: list[str], steps: list[dict[str, Any]], **execution: Any) -> Path:
        return signed_bundle(self.bundles, self.key, vms=vms, steps=steps, execution=execution or None, name="fleet-e2e")

    def lab_cmd(self, *args: str) -> str:
        """``vmbusops lab ...`` on this fleet's lab and state (a migration, a failed node)."""
        done = subprocess.run(
            [VMBUSOPS, "lab", *args, "--lab", str(self.lab), "--state-dir", str(self.state)],
            capture_output=True, text=True, env=self.env(self.tmp / "vmbusops-home"), check=False, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            if proc.process.stdout is not None:
                proc.process.stdout.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log.read_text(errors='replace')[-4000:]}" for p in self.procs)


def _wait_ready(proc: Proc, timeout: float = 120.0) -> str:
    assert proc.process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.process.stdout.readline()
        if not line:
            raise AssertionError(f"{proc.name} exited before ready ({proc.process.wait()}): {proc.log.read_text()[-3000:]}")
        doc = json.loads(line)
        if doc.get("event") == "ready":
            return "http://" + str(doc["listen"][0]).removeprefix("http://")
    raise AssertionError(f"{proc.name} not ready in time")


async def submit(ctl: Proc, path: Path) -> httpx.Response:
    async with ctl.client() as client:
        return await client.post(
            "/v1/jobs", content=await trio.Path(path).read_bytes(), headers={"Content-Type": "application/octet-stream"}
        )


async def wait_job(ctl: Proc, job: int, *, timeout: float = 180.0) -> dict[str, Any]:
    """The job once it has ended, as the controller's API says."""
    with trio.fail_after(timeout):
        async with ctl.client() as client:
            while True:
                body: dict[str, Any] = (await client.get(f"/v1/jobs/{job}")).json()["job"]
                if body["state"] not in ("pending", "delayed", "in-progress"):
                    return body
                await trio.sleep(0.2)


async def runs_of(ctl: Proc, job: int) -> list[dict[str, Any]]:
    async with ctl.client() as client:
        runs: list[dict[str, Any]] = (await client.get(f"/v1/jobs/{job}/runs")).json()["runs"]
        return runs


async def records_of(ctl: Proc, job: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    async with ctl.client() as client:
        while True:
            body = (await client.get(f"/v1/jobs/{job}/records", params={"after": after, "limit": 10000})).json()
            out += body["records"]
            if not body["records"]:
                return out
            after = body["cursor"]


async def placed(ctl: Proc, where: dict[str, str], *, timeout: float = 120.0) -> None:
    """Wait until the controller's placement (``GET /v1/vms``) shows each VM on its host."""
    with trio.fail_after(timeout):
        async with ctl.client() as client:
            while True:
                vms = (await client.get("/v1/vms")).json()["vms"]
                if {v["vm"]: v["host"] for v in vms if v["alive"]} == where:
                    return
                await trio.sleep(0.1)


async def until_record(ctl: Proc, job: int, vm: str, text: str, *, timeout: float = 120.0) -> None:
    """Wait until the controller's journal has a record of ``vm`` whose value contains ``text``."""
    with trio.fail_after(timeout):
        while not any(  # noqa: ASYNC110 - another process moves it
            r["vm"] == vm and text in str(r.get("value", "")) for r in await records_of(ctl, job)
        ):  # fmt: skip
            await trio.sleep(0.1)


class Cuttable:
    """A TCP relay to the nats-server that the test can cut (every connection dropped, new ones
    refused) and mend: a host's network path to the broker, and only that host's."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("nats://").rpartition(":")
        self.target = (host, int(port))
        self.port = 0
        self.cut_off = False
        self._scopes: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            if self.cut_off:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    server = await trio.open_tcp_stream(*self.target)
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
                except OSError:
                    pass
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def cut(self) -> None:
        self.cut_off = True
        for scope in list(self._scopes):
            scope.cancel()

    def mend(self) -> None:
        self.cut_off = False
