"""A fleet of real processes for end-to-end tests: the test's nats-server fixture, and over it
:class:`vmbusops.fleet.localfleet.LocalFleet`'s controllers (``vmbusops fleet serve``) and agents
(``vmbusops agent --fleet``), started one by one by the test, over one simulated cluster lab whose
state they share, each process with its own VMBUSOPS_HOME."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import trio

from vmbusops.fleet.localfleet import FleetProcess, LocalFleet, vmbusops_command

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

#: A process of the fleet (its ``client()`` is the API's, with the controller's token).
Proc = FleetProcess


def lab_text(vms: dict[str, str], notes: dict[str, str] | None = None) -> str:
    """``vms``: VM name -> the host that owns it at first (guests take the lab's own credential);
    ``notes``: VM name -> its Notes."""
    return LAB + "".join(
        f'\n[[vm]]\nname = "{vm}"\nhost = "{host}"\n'
        + (f"notes = {json.dumps((notes or {})[vm])}\n" if vm in (notes or {}) else "")
        for vm, host in vms.items()
    )


class FleetProcs(LocalFleet):
    """:class:`LocalFleet` on the test's nats-server, nothing started until the test says."""

    def __init__(self, tmp: Path, nats_url: str, vms: dict[str, str], *, host_ttl: float = 5.0, lease_ttl: float = 3.0,
                 more_lab: str = "", notes: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(
            tmp, lab_text=lab_text(vms, notes) + more_lab, nats_url=nats_url, controllers=0, start_agents=False, host_ttl=host_ttl,
            lease_ttl=lease_ttl, heartbeat=0.2, canary=1, log_level="info",
        )  # fmt: skip
        self.vms = vms
        self.start()

    def bundle(self, vms: list[str], steps: list[dict[str, Any]], **execution: Any) -> Path:
        return self.sign_bundle(vms, steps, execution=execution or None, name="fleet-e2e")

    def lab_cmd(self, *args: str) -> str:
        """``vmbusops lab ...`` on this fleet's lab and state (a migration, a failed node)."""
        done = subprocess.run(
            [*vmbusops_command(), "lab", *args, "--lab", str(self.lab_path), "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, env=self._env(self.directory / "vmbusops-home", None), check=False,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout


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
