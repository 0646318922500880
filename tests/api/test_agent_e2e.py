"""The agent end to end: a real process on loopback over the simulator, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import defaultdict
from contextlib import aclosing
from datetime import datetime

import trio
from tests.api.conftest import Agent, submit
from tests.api.sse_client import SSEEvent, open_sse
from tests.builders import script

from vmbusops.engine import Journal, State

LOOP = '1..{n} | ForEach-Object {{ Write-Output "line $_"; Start-Sleep -Milliseconds {ms} }}'


async def follow(
    agent: Agent, job_id: int, *, last_id: str | None = None, stop_after: int | None = None
) -> list[SSEEvent]:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    got: list[SSEEvent] = []
    records = 0
    async with open_sse(agent.url, f"/v1/jobs/{job_id}/events", {**agent.headers(), **headers}) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async with aclosing(resp.events()) as events:
            async for event in events:
                got.append(event)
                if event.event == "record":
                    records += 1
                    if stop_after is not None and records >= stop_after:
                        break  # the follower goes away mid-stream
    return got


async def test_follow_resume_without_gap_or_duplicate_matches_journal(agent: Agent) -> None:
    vms = ["a-web01", "a-web02", "b-db01"]
    path = agent.bundle(vms, [script("count", LOOP.format(n=120, ms=4))])
    r = await submit(agent, path)
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"

    first = await follow(agent, job_id, stop_after=40)
    records = [e for e in first if e.event == "record"]
    assert len(records) == 40
    await trio.sleep(0.3)  # records keep coming while no one follows
    rest = await follow(agent, job_id, last_id=records[-1].id)
    assert rest[-1].event == "end" and rest[-1].data["state"] == "success"
    records += [e for e in rest if e.event == "record"]

    seen: dict[str, list[int]] = defaultdict(list)
    for e in records:
        seen[e.data["vm"]].append(e.data["seq"])
    journal = Journal(agent.home / "journal" / "journal.sqlite")
    try:
        stored = journal.records(job_id, limit=100_000)
    finally:
        journal.close()
    # Each record's id is its number in the job: 1, 2, 3... across the reconnection, as journaled.
    assert [int(e.id or 0) for e in records] == [rec.n for rec in stored] == list(range(1, len(stored) + 1))
    expected: dict[str, list[int]] = defaultdict(list)
    for rec in stored:
        expected[rec.vm].append(rec.seq)
    for vm in vms:
        assert seen[vm] == sorted(expected[vm]) == list(range(1, len(expected[vm]) + 1)), vm
    outputs = [e.data["value"] for e in records if e.data["vm"] == "a-web02" and e.data["stream"] == "output"]
    assert outputs == [f"line {i}" for i in range(1, 121)]

    # Resuming from the very end gives no record at all, just the snapshot and the end.
    again = await follow(agent, job_id, last_id=records_cursor(rest))
    assert [e.event for e in again if e.event == "record"] == []
    assert again[-1].event == "end"


def records_cursor(events: list[SSEEvent]) -> str:
    ids = [e.id for e in events if e.event == "record" and e.id is not None]
    return ids[-1]


async def test_cancel_a_run_then_the_job(agent: Agent) -> None:
    path = agent.bundle(["a-web01", "a-web02"], [script("wait", LOOP.format(n=400, ms=50))])
    r = await submit(agent, path)
    job_id = r.json()["job"]["id"]
    async with agent.client() as c:
        await trio.sleep(0.5)
        r = await c.post(f"/v1/jobs/{job_id}/runs/a-web01/cancel")
        assert r.status_code == 202, r.text
        with trio.fail_after(10):
            # The API is polled the way a runbook would: a client has no event to wait on.
            while (await c.get(f"/v1/jobs/{job_id}/runs/a-web01")).json()["run"]["state"] != "cancelled":  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert (await c.get(f"/v1/jobs/{job_id}/runs/a-web02")).json()["run"]["state"] == "in-progress"
        r = await c.post(f"/v1/jobs/{job_id}/cancel", json={})
        assert r.status_code == 202, r.text
        events = await follow(agent, job_id)
        assert events[-1].event == "end" and events[-1].data["state"] == "cancelled"
        r = await c.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 409
    journal = Journal(agent.home / "journal" / "journal.sqlite")
    try:
        runs = {run.vm: run for run in journal.runs(job_id)}
        assert journal.job(job_id).state is State.CANCELLED
        assert runs["a-web01"].state is State.CANCELLED and runs["a-web02"].state is State.CANCELLED
        # The guest loop was stopped, not run to its end.
        assert runs["a-web02"].records < 400
    finally:
        journal.close()


async def test_sigterm_stops_runs_cleanly_and_flushes_the_journal(agent_factory: object) -> None:
    agent: Agent = agent_factory(config="[agent]\nshutdown_grace_seconds = 0.2\n")  # type: ignore[operator]
    path = agent.bundle(["a-web01"], [script("long", LOOP.format(n=1000, ms=20))])
    job_id = (await submit(agent, path)).json()["job"]["id"]
    events = await follow(agent, job_id, stop_after=10)
    assert events
    async with agent.client() as c:
        assert (await c.get("/v1/health")).json()["status"] == "ready"
    with trio.fail_after(20):
        code = await trio.to_thread.run_sync(agent.stop, signal.SIGTERM)
    assert code == 0
    journal = Journal(agent.home / "journal" / "journal.sqlite")
    try:
        job = journal.job(job_id)
        assert job.state is State.INTERRUPTED  # resumable with `vmbusops jobs resume`
        run = journal.runs(job_id)[0]
        stored = journal.records(job_id, limit=100_000)
        assert len(stored) >= 10 and [r.seq for r in stored] == list(range(1, len(stored) + 1))
        assert run.state is State.INTERRUPTED
    finally:
        journal.close()
    events_logged = [line.get("event") for line in agent.log_lines()]
    assert "stopping" in events_logged and "stopped" in events_logged


async def test_failed_runs_carry_their_code_and_times_are_iso_in_runs_records_and_events(agent: Agent) -> None:
    path = agent.bundle(["a-web01"], [script("hello", "'hello'"), script("fails", "exit 3")])
    r = await submit(agent, path)
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    events = await follow(agent, job_id)
    assert events[-1].event == "end" and events[-1].data["state"] == "failed"
    ended = [e.data for e in events if e.event == "run" and e.data["state"] == "failed"]
    assert ended and all(d["code"] == "ExitCode" for d in ended)
    records = [e.data for e in events if e.event == "record"]
    assert records and all(d["event"] == "record" and d["time"].endswith("+00:00") for d in records)
    async with agent.client() as c:
        [run] = (await c.get(f"/v1/jobs/{job_id}/runs")).json()["runs"]
        job = (await c.get(f"/v1/jobs/{job_id}")).json()["job"]
        page = (await c.get(f"/v1/jobs/{job_id}/records")).json()
    assert run["code"] == "ExitCode"
    assert [(s["name"], s["code"], s["exit_code"]) for s in run["steps"]] == [("hello", None, 0), ("fails", "ExitCode", 3)]
    assert datetime.fromisoformat(job["created_at"]) <= datetime.fromisoformat(run["finished_at"])
    assert page["records"] == records  # the same objects from the list and the events
    logs = await trio.run_process(
        [sys.executable, "-m", "vmbusops", "logs", str(job_id), "--json"],
        capture_stdout=True, env={**os.environ, "VMBUSOPS_HOME": str(agent.home)},
    )  # fmt: skip
    assert [json.loads(line) for line in logs.stdout.decode().splitlines()] == records
