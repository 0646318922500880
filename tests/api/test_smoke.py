from __future__ import annotations

from tests.api.conftest import Agent, sse_events, submit
from tests.engine.conftest import script


async def test_submit_and_follow(agent: Agent) -> None:
    path = agent.bundle(["a-web01", "a-web02"], [script("hello", 'Write-Output "hi"')])
    r = await submit(agent, path)
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    async with agent.client() as c, c.stream("GET", f"/v1/jobs/{job['id']}/events") as resp:
        events = [e async for e in sse_events(resp)]
    print([ (e.event, e.data) for e in events])
    assert events[-1].event == "end"
