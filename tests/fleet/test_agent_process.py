"""``vmbusops agent --fleet`` as a real process: refusals at start, joining, and a process killed
under a fleet run (not resumed here; ``jobs resume`` refuses it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import trio
from tests.api.conftest import VMBUSOPS, start_agent, wait_ready
from tests.builders import VM, write_lab
from tests.engine.bundles import signed_bundle, trust_and_credential
from tests.fleet.conftest import PASSWORDS

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.fleet import messages, names
from vmbusops.fleet.nats_broker import NatsBroker
from vmbusops.fleet.natsserver import NatsServer

HOST = "HV-P"
SLOW = {"kind": "script", "name": "slow", "inline": 'Write-Output "started"; Start-Sleep -Seconds 60'}


def run_cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMBUSOPS, *args], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "VMBUSOPS_HOME": str(home), **(env or {})},
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bad_fleet_url_or_an_unreachable_broker_stops_the_agent_in_one_line(vmbusops_home: Path) -> None:
    bad = run_cli("agent", "--host", "sim", "--listen", "127.0.0.1:0", "--fleet", "http://x:1", home=vmbusops_home)
    assert bad.returncode == 2, bad.stderr
    assert "bad --fleet URL 'http://x:1'" in bad.stderr and "Traceback" not in bad.stderr
    named = run_cli("agent", "--fleet", "nats://127.0.0.1:1", "--fleet-host", "hv.01", home=vmbusops_home)
    assert named.returncode == 2 and "fleet host name 'hv.01' is not valid" in named.stderr
    url = f"nats://127.0.0.1:{free_port()}"
    gone = run_cli("agent", "--host", "sim", "--listen", "127.0.0.1:0", "--fleet", url, home=vmbusops_home,
                   env={"VMBUSOPS_NATS_PASSWORD": "never-shown-5e1"}, )  # fmt: skip
    assert gone.returncode == 2 and "a NATS password without a user" in gone.stderr  # refused before connecting
    gone = run_cli("agent", "--host", "sim", "--listen", "127.0.0.1:0", "--fleet", url, "--fleet-user", "u",
                   home=vmbusops_home, env={"VMBUSOPS_NATS_PASSWORD": "never-shown-5e1"})  # fmt: skip
    assert gone.returncode == 3, gone.stderr
    assert "Traceback" not in gone.stderr and "never-shown-5e1" not in gone.stderr + gone.stdout
    errors = [line for line in gone.stderr.splitlines() if line.startswith("vmbusops:")]
    assert len(errors) == 1 and url in errors[0], gone.stderr


def test_an_agent_joining_as_another_hosts_nats_user_is_refused_at_start(
    vmbusops_home: Path, fleet_server: NatsServer
) -> None:
    """It would say ready and then fail every heartbeat: one line at start instead, exit 2."""
    password = PASSWORDS["HV-B"]
    wrong = run_cli("agent", "--host", "sim", "--listen", "127.0.0.1:0", "--fleet", fleet_server.url,
                    "--fleet-host", "HV-A", "--fleet-user", "HV-B", home=vmbusops_home,
                    env={"VMBUSOPS_NATS_PASSWORD": password})  # fmt: skip
    assert wrong.returncode == 2, wrong.stderr
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("vmbusops:")]
    assert len(errors) == 1 and "the NATS user HV-B may not use fleet host HV-A's subjects" in errors[0], wrong.stderr
    assert "--fleet-user" in wrong.stderr and password not in wrong.stderr + wrong.stdout
    assert '"event": "ready"' not in wrong.stdout


async def test_an_agent_killed_under_a_fleet_run_leaves_it_to_the_controller(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path, vmbusops_home: Path
) -> None:
    key = PrivateKey.generate()
    trust_and_credential(key)
    lab = write_lab(tmp_path / "labs", [VM("web01")])
    config = f'[fleet]\nurl = "{nats_server.url}"\nhost = "{HOST}"\nheartbeat_seconds = 0.2\nhost_ttl_seconds = 2\n'
    await broker.ensure_work_consumer(HOST)
    agent = start_agent(vmbusops_home, tmp_path, lab, config=config)
    try:
        await trio.to_thread.run_sync(wait_ready, agent)
        entry = await until_entry(broker)
        first_boot = json.loads(entry)["boot"]
        assert [v["vm"] for v in json.loads(entry)["vms"]] == ["web01"]
        data = signed_bundle(tmp_path, key, vms=["web01"], steps=[SLOW]).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        await broker.put_bundle(digest, data)
        vm_id = json.loads(entry)["vms"][0]["vm_id"]
        work = messages.DispatchWork(
            job=21, run=1, vm="web01", vm_id=vm_id, epoch=1, bundle=digest,
            start=messages.RunStartWire(step_states=("pending",), attempts=(0,), next_seq=1), controller="t", time=0.0,
        )  # fmt: skip
        await broker.publish(names.work_subject(HOST), messages.encode(work), msg_id=work.msg_id())
        with trio.fail_after(60):
            after = 0
            started = False
            while not started:
                for m in await broker.read_log(after=after, batch=50, timeout=1.0):
                    after = m.seq
                    fact = messages.parse_host(m.data, host=HOST)
                    found = fact.batches if isinstance(fact, messages.BatchesFact) else [fact]
                    started = started or any(
                        isinstance(f, messages.BatchFact) and any("started" in r[5] for r in f.records) for f in found
                    )
        agent.kill()  # SIGKILL, under the run
        agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()
        agent = start_agent(vmbusops_home, tmp_path, lab, config=config)
        await trio.to_thread.run_sync(wait_ready, agent)
        entry = await until_entry(broker, not_boot=first_boot)
        journal = Journal(vmbusops_home / "journal" / "journal.sqlite", readonly=True)
        try:
            [job] = journal.jobs()
            [run] = journal.runs(job.id)
        finally:
            journal.close()
        assert run.state is State.FAILED and "the fleet controller dispatches it again" in (run.error or "")
        resumed = await trio.to_thread.run_sync(lambda: run_cli("jobs", "resume", str(job.id), home=vmbusops_home))
        assert resumed.returncode == 2, resumed.stderr
        assert f"job {job.id} ran a fleet run" in resumed.stderr and "Traceback" not in resumed.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        if agent.stdout is not None:
            agent.stdout.close()


async def until_entry(broker: NatsBroker, *, not_boot: str | None = None) -> bytes:
    with trio.fail_after(60):
        while True:
            entry = await broker.kv_get(names.HOSTS_BUCKET, HOST)
            if entry is not None and json.loads(entry.value)["boot"] != not_boot:
                return entry.value
            await trio.sleep(0.1)
