"""``vmbusops demo --fleet``: the fleet tour on a simulated fleet of three hosts, on loopback.

It starts what a provider runs (:class:`vmbusops.fleet.localfleet.LocalFleet`): ``nats-server``
on a free loopback port with a NATS user per host, a controller (``vmbusops fleet serve``) and
three agents (``vmbusops agent --fleet``), HV-A and HV-B nodes of the failover cluster CL1 and
HV-C a lone host. Then, all through the controller's HTTP API as ``vmbusops submit --agent`` and
``vmbusops logs -f --agent`` use it:

1. the fleet's VMs and the hosts that run them (``GET /v1/vms``);
2. one signed job over VMs on every host, its records followed live (Server-Sent Events);
3. mid-job, web01 live-migrates from HV-A to HV-B: its run goes on on HV-B from its last
   finished step (the step it was in runs again there: it is idempotent);
4. mid-job, HV-C's agent is killed: the controller judges the host lost, and dispatches db01's
   run again once HV-C's agent is back;
5. the per-VM table, and for each fault one line saying whether it was resolved.

Exit code 0 when every run succeeded and no finished step ran twice, else 1.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vmbusops.cli import exitcodes
from vmbusops.cli.output import terminal_safe
from vmbusops.errors import ConfigError, TransportError

HOSTS = {"HV-A": "CL1", "HV-B": "CL1", "HV-C": None}
VMS = {"web01": "HV-A", "web02": "HV-A", "web03": "HV-B", "db01": "HV-C"}
MIGRATED, MIGRATE_TO = "web01", "HV-B"
KILLED_HOST = "HV-C"
KILLED_VM = "db01"
STEP_SECONDS = 5

LAB = "[host]\nboot_seconds = 0.5\n" + "".join(
    f'\n[[hosts]]\nname = "{h}"\n' + (f'cluster = "{c}"\n' if c else "") for h, c in HOSTS.items()
) + "".join(f'\n[[vm]]\nname = "{vm}"\nhost = "{host}"\n' for vm, host in VMS.items())


def _steps() -> list[dict[str, Any]]:
    def marker(n: int, extra: str = "") -> dict[str, Any]:
        return {"kind": "script", "name": f"s{n}", "inline": f'Write-Output "ran s{n} in $env:COMPUTERNAME"{extra}'}

    slow = {**marker(2, f"; Start-Sleep -Seconds {STEP_SECONDS}; Write-Output 's2 done'"), "idempotent": True}
    return [marker(1), slow, marker(3)]


def _rule(console: Console, title: str) -> None:
    if console.is_terminal:
        console.rule(title)
    else:
        console.print(f"\n== {title} ==")


@dataclass
class Watch:
    """What the follower has seen: the trigger points of the faults, the records in order."""

    started: dict[str, trio.Event] = field(default_factory=dict)
    lost: trio.Event = field(default_factory=trio.Event)
    records: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, str] = field(default_factory=dict)

    def on_event(self, console: Console, name: str, data: dict[str, Any]) -> None:
        from vmbusops.cli.record_lines import record_text
        from vmbusops.cli.remote import _record_view

        if name == "run":
            text = f"run {data['state']}" + (f" {data['step']}" if data.get("step") else "")
            if self.last_run.get(data["vm"]) != text:  # the same state again says nothing new
                self.last_run[data["vm"]] = text
                console.print(Text(f"  {data['vm']:<6} {text}", style="dim"))
            return
        if name != "record":
            return
        self.records.append(data)
        text = terminal_safe(record_text(_record_view(data)))
        note = data.get("step") is None and data["stream"] == "warning" and text.startswith("run ")
        style = "bold yellow" if note else ("red" if data["stream"] == "error" else "")
        label = "controller" if note else f"{data['stream']:<10}"
        console.print(Text(f"  {data['vm']:<6} {label}  {text}", style=style))
        if data["stream"] == "output" and text.startswith("ran s2") and data["vm"] in self.started:
            self.started[data["vm"]].set()
        if note and text.startswith(f"run lost host {KILLED_HOST}"):
            self.lost.set()


def _hosts_of(records: list[dict[str, Any]], vm: str) -> list[tuple[str, str]]:
    """(host, output text) of ``vm``'s output records, the host following the controller's notes."""
    host = VMS[vm]
    out = []
    for r in sorted((r for r in records if r["vm"] == vm), key=lambda r: r["seq"]):
        message = str(r.get("message", ""))
        if r.get("step") is None and message.startswith("run moved to host "):
            host = message.removeprefix("run moved to host ").split(":")[0]
        elif r["stream"] == "output":
            out.append((host, str(r.get("value"))))
    return out


async def _fleet_tour(console: Console, workdir: Path) -> int:
    from vmbusops.cli.remote import AgentClient, follow_events
    from vmbusops.fleet.localfleet import LocalFleet, LocalFleetError
    from vmbusops.fleet.natsserver import NatsServerError

    fleet = LocalFleet(workdir, lab_text=LAB, per_host_users=True, host_ttl=2.0, heartbeat=0.25)
    _rule(console, "[bold]1. A fleet on loopback: nats-server, a controller, three agents (HV-A, HV-B: cluster CL1)")
    try:
        try:
            await trio.to_thread.run_sync(fleet.start)
        except (LocalFleetError, NatsServerError) as exc:
            raise TransportError(f"the local fleet did not start: {exc}") from None
        console.print(f"  nats-server {fleet.nats_url} (JetStream; a NATS user per host, its own subjects only)")
        for proc in fleet.controller_procs:
            console.print(f"  controller  {proc.url}  (vmbusops fleet serve, pid {proc.pid})")
        for host, proc in fleet.agents.items():
            where = f"node of cluster {HOSTS[host]}" if HOSTS[host] else "a lone host"
            console.print(f"  agent {host}  {where}  (vmbusops agent --fleet, pid {proc.pid})")
        return await _job_tour(console, fleet, AgentClient(fleet.url, fleet.token), follow_events)
    except BaseException:
        console.print(Text(f"  the fleet's logs are in {fleet.logs_dir}", style="yellow"))
        raise
    finally:
        # Shielded: a Ctrl-C, SIGTERM or hangup has cancelled everything around it, and without
        # the shield this await would raise at once and leave the fleet's processes running.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(fleet.close)


async def _job_tour(console: Console, fleet: Any, agent: Any, follow_events: Any) -> int:
    _rule(console, "[bold]2. The fleet's VMs and their hosts, from the controller (GET /v1/vms)")
    table = Table("VM", "host", "cluster", "state", "host alive")
    for v in await trio.to_thread.run_sync(fleet.vms):
        table.add_row(Text(v["vm"]), v["host"], v["cluster"] or "-", v["state"], "yes" if v["alive"] else "no")
    console.print(table)

    _rule(console, "[bold]3. One signed job over VMs on every host, followed live through the controller (SSE)")
    bundle = fleet.sign_bundle(sorted(VMS), _steps(), execution={"max_concurrency": "100%"}, name="fleet-demo")
    job = await trio.to_thread.run_sync(fleet.submit, bundle)
    job_id = int(job["id"])
    console.print(f"  job {job_id} accepted by the controller: {', '.join(job['targets'])}; steps s1, s2 "
                  f"({STEP_SECONDS} s, idempotent), s3")  # fmt: skip
    watch = Watch(started={MIGRATED: trio.Event(), KILLED_VM: trio.Event()})
    end: dict[str, Any] = {}

    async def follow() -> None:
        end.update(await follow_events(agent, job_id, lambda n, d: watch.on_event(console, n, d)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        with trio.fail_after(120):
            await watch.started[MIGRATED].wait()
        moved = await trio.to_thread.run_sync(fleet.migrate, MIGRATED, MIGRATE_TO)
        console.print(Text(f"  >>> 4. live migration mid-step: {MIGRATED} {moved.source} -> {moved.to} "
                           f"(vmbusops lab migrate)", style="bold cyan"))  # fmt: skip
        with trio.fail_after(120):
            await watch.started[KILLED_VM].wait()
        await trio.to_thread.run_sync(fleet.kill_agent, KILLED_HOST)
        console.print(Text(f"  >>> 5. the agent of {KILLED_HOST} is killed (SIGKILL) while {KILLED_VM} is in s2",
                           style="bold cyan"))  # fmt: skip
        with trio.fail_after(120):
            await watch.lost.wait()
        await trio.to_thread.run_sync(fleet.start_agent, KILLED_HOST)
        console.print(Text(f"  >>> the agent of {KILLED_HOST} is back (a new process)", style="bold cyan"))
    return await _outcome(console, fleet, job_id, end, watch.records)


async def _outcome(console: Console, fleet: Any, job_id: int, end: dict[str, Any], records: list[dict[str, Any]]) -> int:
    def get(path: str) -> Any:
        with fleet.client() as c:
            return c.get(path).json()

    runs = (await trio.to_thread.run_sync(get, f"/v1/jobs/{job_id}/runs"))["runs"]
    _rule(console, f"[bold]6. Job {job_id}: {end.get('state', '?')}, per VM")
    table = Table("VM", "hosts", "state", "records", "steps' output (host: text)")
    problems = 0
    for run in runs:
        said = _hosts_of(records, run["vm"])
        hosts = " -> ".join(dict.fromkeys(h for h, _ in said)) or VMS[run["vm"]]
        shown = "; ".join(f"{h}: {t}" for h, t in said)
        table.add_row(Text(run["vm"]), hosts, run["state"], str(run["records"]), Text(terminal_safe(shown)))
        twice = [t for t, n in Counter(t for _, t in said).items() if n > 1 and not t.startswith("ran s2")]
        if run["state"] != "success" or twice:
            problems += 1
            console.print(Text(f"  {run['vm']}: {run['state']} {run.get('error') or ''} {twice or ''}", style="red"))
    console.print(table)
    problems += _verdicts(console, records, end)
    _rule(console, "[bold]done")
    return exitcodes.OK if problems == 0 else exitcodes.GUEST_ERRORS


def _verdicts(console: Console, records: list[dict[str, Any]], end: dict[str, Any]) -> int:
    """One line per thing shown: resolved, or NOT resolved and why."""
    def say(ok: bool, text: str) -> int:
        console.print(Text(("  resolved: " if ok else "  NOT resolved: ") + text, style="green" if ok else "red"))
        return 0 if ok else 1

    problems = 0
    said = _hosts_of(records, MIGRATED)
    s1 = [h for h, t in said if t.startswith("ran s1")]
    after = [h for h, t in said if t.startswith(("ran s3", "s2 done"))]
    problems += say(
        s1 == [VMS[MIGRATED]] and bool(after) and set(after) == {MIGRATE_TO},
        f"{MIGRATED} live-migrated {VMS[MIGRATED]} -> {MIGRATE_TO} mid-step s2; its run went on on {MIGRATE_TO} "
        f"from its last finished step (s1 ran once, on {', '.join(s1) or 'nowhere'}; s2 ran again and s3 ran on "
        f"{', '.join(dict.fromkeys(after)) or 'nowhere'})",
    )  # fmt: skip
    said = _hosts_of(records, KILLED_VM)
    notes = [str(r.get("message")) for r in records if r["vm"] == KILLED_VM and r.get("step") is None]
    back = any(n.startswith(f"run moved to host {KILLED_HOST}") for n in notes)
    once = [t for _, t in said].count(f"ran s1 in {KILLED_VM.upper()}") == 1
    problems += say(
        back and once and any(t.startswith("ran s3") for _, t in said),
        f"{KILLED_VM}'s agent on {KILLED_HOST} was killed mid-step s2; the controller judged {KILLED_HOST} lost, and "
        f"dispatched the run again when its agent came back (s1 ran once; s2 again; s3)",
    )  # fmt: skip
    state = end.get("state")
    problems += say(
        state == "success",
        f"the job ended {state}: every run ended once, on whichever host had its VM, and no finished step ran twice",
    )
    return problems


def run_fleet_demo(console: Console) -> int:
    """Start the local fleet in a scratch directory, tour it, stop everything; the exit code."""
    from vmbusops.fleet.natsserver import find_nats_server

    if find_nats_server() is None:
        raise ConfigError(
            "vmbusops demo --fleet needs nats-server, which is not installed",
            hint="install Debian's nats-server package (./scripts/demo --fleet does it for you)",
        )
    workdir = Path(tempfile.mkdtemp(prefix="vmbusops-fleet-demo-"))
    from vmbusops.cli.remote import run_client

    code = run_client(lambda: _fleet_tour(console, workdir), saying="interrupted, stopping the fleet it started...")
    if code == exitcodes.OK:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        console.print(f"  the fleet's files and logs are kept in {workdir}")
    return code
