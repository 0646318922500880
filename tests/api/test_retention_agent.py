"""The agent applies retention on its own, shows the journal's size in /metrics, and still stops."""

from __future__ import annotations

import re
import time
from typing import Any

import trio
from starlette.responses import JSONResponse
from tests.engine.test_retention import NOW, add_job, bundle_folder

from vmbusops.engine import Journal, State
from vmbusops.owner import current_owner
from vmbusops.retention import DAY


async def test_the_agent_prunes_at_start_reports_the_journal_size_and_stops_cleanly(agent_factory: Any) -> None:
    journal = Journal()
    folder = bundle_folder("finished")
    # Finished 40 days ago (by the wall clock the agent reads): past the default 30 days.
    old = add_job(journal, folder, state=State.SUCCESS, finished_days_ago=(NOW - time.time()) / DAY + 40)
    journal.close()

    agent = agent_factory()
    reader = Journal()
    # The first pass runs at start-up; wait for it (an agent has no event to wait on from here).
    with trio.move_on_after(30):
        while folder.exists() or reader.records(old):  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert not folder.exists()
    assert reader.records(old) == []

    async with agent.client() as client:
        text = (await client.get("/metrics")).text
    [size] = re.findall(r"^vmbusops_journal_bytes (\S+)$", text, re.MULTILINE)
    assert float(size) >= reader.path.stat().st_size > 0
    assert agent.stop() == 0  # the retention task ends with the agent


async def test_a_job_deleted_after_its_status_was_read_is_not_found_and_a_new_job_has_its_own_targets(
    agent_factory: Any,
) -> None:
    """The agent keeps a job's targets once read: that holds only while a deleted job is not
    found and a job id is never used again."""
    journal = Journal()
    first = add_job(journal, None, state=State.SUCCESS, finished_days_ago=1)
    agent = agent_factory()
    async with agent.client() as client:
        got = await client.get(f"/v1/jobs/{first}")
        assert got.json()["job"]["targets"] == ["vm01"]
        assert got.content == JSONResponse(got.json()).body  # the kept targets' JSON, spliced
        journal.delete_job(first)  # as retention does, on its own connection
        assert (await client.get(f"/v1/jobs/{first}")).status_code == 404
        second, _ = journal.create_job(
            bundle_name="b", bundle_version=1, bundle_id="id-second", source="test", manifest="{}",
            bundle_dir=None, enable_guest_services=False, envelope=None, host="sim", vms=["vm02", "vm03-é"],
            steps=[("s", "script")], owner=current_owner(), now=NOW,
        )  # fmt: skip
        assert second != first
        got = await client.get(f"/v1/jobs/{second}")
        assert got.json()["job"]["targets"] == ["vm02", "vm03-é"]
        assert got.content == JSONResponse(got.json()).body
    journal.close()
    assert agent.stop() == 0
