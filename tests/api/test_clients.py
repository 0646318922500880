"""`vmbusops submit` and `vmbusops logs --agent` print what the local commands print."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import trio
from tests.api.conftest import VMBUSOPS, Agent
from tests.builders import bundle_doc, script, write_bundle_source

from vmbusops.bundle.build import build_bundle, sign_bundle


def cli(agent: Agent, *args: str, token: str | None = "admin") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VMBUSOPS_HOME": str(agent.home)}
    env.pop("VMBUSOPS_TOKEN", None)
    if token is not None:
        env["VMBUSOPS_TOKEN"] = agent.tokens[token]
    return subprocess.run([VMBUSOPS, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.slow
async def test_submit_follow_and_remote_logs_match_the_local_commands(agent: Agent) -> None:
    steps = [script("greet", 'Write-Output "hello"; Write-Warning "careful"; Write-Error "bad thing"')]
    path = agent.bundle(["a-web01", "a-web02"], steps)
    done = await trio.to_thread.run_sync(
        lambda: cli(agent, "submit", str(path), "--agent", agent.url, "--follow")
    )
    assert done.returncode == 1, done.stderr  # a guest wrote an error: as vmbusops run says
    lines = done.stdout.splitlines()
    job_id = int(lines[0].split()[1])
    assert lines[0] == f"job {job_id}"
    assert "a-web01    | hello" in lines and "a-web02    | WARNING: careful" in lines
    assert any(line.startswith("a-web01    | ERROR: bad thing") for line in lines)
    assert f"job {job_id}: failed" in done.stdout

    local = await trio.to_thread.run_sync(lambda: cli(agent, "logs", str(job_id), token=None))
    remote = await trio.to_thread.run_sync(lambda: cli(agent, "logs", str(job_id), "--agent", agent.url))
    followed = await trio.to_thread.run_sync(
        lambda: cli(agent, "logs", str(job_id), "-f", "--agent", agent.url)
    )
    assert local.returncode == remote.returncode == followed.returncode == 0
    assert remote.stdout == local.stdout
    assert sorted(followed.stdout.splitlines()) == sorted(local.stdout.splitlines())
    local_json = await trio.to_thread.run_sync(lambda: cli(agent, "logs", str(job_id), "--json", token=None))
    remote_json = await trio.to_thread.run_sync(
        lambda: cli(agent, "logs", str(job_id), "--json", "--agent", agent.url)
    )
    assert remote_json.stdout == local_json.stdout
    for follow in ([], ["-f"]):  # a VM the job does not target: one line, exit 2, followed or not
        nosuch = await trio.to_thread.run_sync(
            lambda: cli(agent, "logs", str(job_id), "--vm", "nosuch", *follow, "--agent", agent.url)  # noqa: B023
        )
        assert (nosuch.returncode, nosuch.stdout) == (2, ""), nosuch
        assert nosuch.stderr.splitlines()[0] == f"vmbusops: no run on nosuch in job {job_id}"


async def test_submit_follow_shows_guest_control_characters_as_logs_does(agent: Agent) -> None:
    """Guest text is hostile: an ESC, a BEL or a backspace in a record or a run's error reaches the
    operator's terminal as a visible escape, never as a command, from `submit --follow` as from
    `logs`."""
    steps = [script("paint", 'Write-Output "A`e[31mRED`e]0;TITLE`a B`bBS"; Write-Error "bad`e[2J"; exit 3')]
    path = agent.bundle(["a-web01"], steps)
    done = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(path), "--agent", agent.url, "--follow"))
    assert done.returncode != 0, done.stderr
    shown = r"A\x1b[31mRED\x1b]0;TITLE\x07 B\x08BS"
    assert f"a-web01    | {shown}" in done.stdout.splitlines()
    assert r"ERROR: bad\x1b[2J" in done.stdout
    assert not set(done.stdout) & {"\x1b", "\x07", "\x08"}
    job_id = done.stdout.splitlines()[0].split()[1]
    local = await trio.to_thread.run_sync(lambda: cli(agent, "logs", job_id, token=None))
    assert f"a-web01  | {shown}" in local.stdout.splitlines()


async def test_a_bundle_whose_globs_match_no_vm_is_refused_and_makes_no_job(agent: Agent) -> None:
    path = agent.bundle(["nomatch*"], [script("s", "hostname")])
    done = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(path), "--agent", agent.url))
    assert done.returncode == 2, done
    assert "the bundle's targets (nomatch*) select no VM on this host" in done.stderr
    listed = await trio.to_thread.run_sync(lambda: cli(agent, "jobs", "--agent", agent.url, "--json"))
    assert listed.returncode == 0 and listed.stdout.strip() in ("", "[]"), listed


async def test_submit_follow_json_lines_carry_their_time_as_run_json_does(agent: Agent) -> None:
    path = agent.bundle(["a-web01"], [script("greet", 'Write-Output "hello"')])
    done = await trio.to_thread.run_sync(
        lambda: cli(agent, "submit", str(path), "--agent", agent.url, "--follow", "--json")
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    runs = [line for line in lines if line["event"] == "run"]
    assert runs and [line for line in lines if line["event"] == "record"]
    for line in lines:
        if line["event"] in ("run", "record"):
            assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0), line
    # the keys, in the order vmbusops run --json writes a run line
    assert all(list(line) == ["event", "vm", "time", "state", "step", "error", "code"] for line in runs), runs


@pytest.mark.slow
async def test_jobs_and_history_globs_read_an_agent_as_the_journal(agent: Agent) -> None:
    path = agent.bundle(["a-web01", "a-web02"], [script("greet", 'Write-Output "hello"')])
    done = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(path), "--agent", agent.url, "--follow"))
    assert done.returncode == 0, done.stderr
    for args in (["jobs", "--vm", "A-WEB*", "--json"], ["history", "--vm", "a-web0?", "--json"]):
        remote = await trio.to_thread.run_sync(lambda: cli(agent, *args, "--agent", agent.url))  # noqa: B023
        local = await trio.to_thread.run_sync(lambda: cli(agent, *args, token=None))  # noqa: B023
        assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
        assert remote.stdout and remote.stdout.splitlines() == local.stdout.splitlines(), (remote.stdout, local.stdout)
    history = [json.loads(line) for line in remote.stdout.splitlines()]
    assert sorted(h["vm"] for h in history) == ["a-web01", "a-web02"]


async def test_client_errors_map_to_the_documented_exit_codes(agent: Agent, tmp_path: object) -> None:
    path = agent.bundle(["a-web01"], [script("s", 'Write-Output "x"')])
    no_token = await trio.to_thread.run_sync(
        lambda: cli(agent, "submit", str(path), "--agent", agent.url, token=None)
    )
    assert no_token.returncode == 2 and "VMBUSOPS_TOKEN" in no_token.stderr
    other = await trio.to_thread.run_sync(
        lambda: cli(agent, "submit", str(path), "--agent", agent.url, token="tenant_b")
    )
    assert other.returncode == 2 and "outside the scope" in other.stderr
    ok = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(path), "--agent", agent.url))
    assert ok.returncode == 0 and ok.stdout.startswith("job ")
    replay = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(path), "--agent", agent.url))
    assert replay.returncode == 4 and "rejected" in replay.stderr
    for result in (no_token, other, ok, replay):
        for token in agent.tokens.values():
            assert token not in result.stdout + result.stderr


async def test_a_bundle_with_a_schedule_is_registered_not_run(agent: Agent, tmp_path: Path) -> None:
    schedule = {"cron": "0 2 * * *", "window": "2h", "cutoff": "30m", "jitter": "5m", "missed": "run-once"}
    src = write_bundle_source(
        tmp_path / "nightly",
        bundle_doc(["a-*"], [script("s", "Write-Output 1")], name="nightly", schedule=schedule),
    )
    bundle = tmp_path / "nightly.vmb"
    build_bundle(src, bundle)
    sign_bundle(bundle, agent.key)
    done = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(bundle), "--agent", agent.url))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("schedule nightly v1 registered: next run ")
    listed = await trio.to_thread.run_sync(
        lambda: cli(agent, "schedule", "list", "--json", "--agent", agent.url)
    )
    row = json.loads(listed.stdout)
    assert row["cron"] == "0 2 * * *" and row["window_seconds"] == 7200 and row["missed_policy"] == "run-once"
    assert datetime.fromisoformat(row["next_run"]).hour == 2
    local = await trio.to_thread.run_sync(lambda: cli(agent, "schedule", "list", "--json", token=None))
    assert json.loads(local.stdout)["next_run"] == row["next_run"]
    async with agent.client("tenant_b") as b:
        assert (await b.get("/v1/schedules")).json()["schedules"] == []
        assert (await b.delete("/v1/schedules/nightly")).status_code == 404  # another tenant's: as none
    async with agent.client("reader") as r:
        assert (await r.delete("/v1/schedules/nightly")).status_code == 403  # no cancel scope
    async with agent.client("admin") as c:
        assert (await c.get("/v1/jobs")).json()["jobs"] == []  # nothing ran now

    removed = await trio.to_thread.run_sync(
        lambda: cli(agent, "schedule", "remove", "nightly", "--agent", agent.url)
    )
    assert removed.returncode == 0 and removed.stdout.startswith("schedule nightly removed"), removed
    again = await trio.to_thread.run_sync(lambda: cli(agent, "schedule", "remove", "nightly", "--agent", agent.url))
    assert again.returncode == 2 and "no schedule 'nightly' visible to you" in again.stderr, again
    local = await trio.to_thread.run_sync(lambda: cli(agent, "schedule", "remove", "nightly", token=None))
    assert local.returncode == 2 and "no schedule named 'nightly'" in local.stderr, local
    async with agent.client("admin") as c:
        assert (await c.get("/v1/schedules")).json()["schedules"] == []
    assert any(line.get("event") == "schedule-removed" for line in agent.log_lines())


async def test_submit_follow_exits_5_when_a_guarded_change_was_rolled_back(agent: Agent) -> None:
    from tests.engine.bundles import trust_and_credential

    trust_and_credential(agent.key, checkpoints=True)  # the agent reads its trust policy per bundle
    steps = [script("change", 'Write-Output "changed"', guard="checkpoint")]
    path = agent.bundle(["a-web01"], steps, guard={"health": {"inline": "exit 1"}})
    done = await trio.to_thread.run_sync(lambda: cli(agent, "submit", str(path), "--agent", agent.url, "--follow"))
    assert done.returncode == 5, done.stderr
    assert "rolled-back" in done.stdout and "rolled back to checkpoint vmbusops-job1-run1-change" in done.stdout
