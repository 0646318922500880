"""The console against a fleet controller (Chromium): the VM table gains host and cluster
columns, and what the broker carries there is shown as text, never as markup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.api.console.test_browser import HOSTILE, wait_for
from tests.fleet.conftest import make_nats_server, nats_server  # noqa: F401 - fixtures
from tests.fleet.fleetprocs import FleetProcs, placed

from vmbusops.fleet import names
from vmbusops.fleet.nats_broker import open_broker
from vmbusops.fleet.natsserver import NatsServer


@pytest.fixture
def fleet(nats_server: NatsServer, tmp_path: Path) -> Iterator[FleetProcs]:  # noqa: F811
    procs = FleetProcs(tmp_path, nats_server.url, {"vm-a1": "HV-A"})
    try:
        yield procs
    finally:
        procs.close()


def test_the_vm_table_shows_host_and_cluster_as_text(fleet: FleetProcs, nats_server: NatsServer, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    fleet.start_agent("HV-A")
    ctl = fleet.start_controller("ctl1")

    async def setup() -> None:
        await placed(ctl, {"vm-a1": "HV-A"})
        # What a host's user could write in its own placement entry (the broker is not trusted).
        entry = {"vm": HOSTILE, "vm_id": "id-hostile", "host": "HV-A", "cluster": HOSTILE, "state": "Running",
                 "boot": "b"}  # fmt: skip
        async with open_broker(nats_server.url) as broker:
            await broker.kv_put(names.PLACEMENT_BUCKET, "id-hostile", json.dumps(entry).encode())

    trio.run(setup)
    browser.get(f"{ctl.url}/console/")
    token = wait_for(browser, lambda d: d.find_element(By.ID, "token") if d.find_element(By.ID, "sign-in").is_displayed() else None, "the sign-in form")
    token.send_keys(ctl.token)
    browser.find_element(By.ID, "sign-in-button").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "nav").is_displayed(), "the console after sign-in")
    browser.get(f"{ctl.url}/console/#/vms")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vms-body tr[data-vm]")) == 2, "both VMs")
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#vms thead th")]
    assert heads[:4] == ["VM", "Host", "Cluster", "State"]
    rows = {
        tr.get_attribute("data-vm"): [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "#vms-body tr[data-vm]")
    }
    assert rows["vm-a1"][:4] == ["vm-a1", "HV-A", "CL1", "Running"]
    assert rows[HOSTILE][:3] == [HOSTILE, "HV-A", HOSTILE]
    assert browser.execute_script("return window.pwned === undefined && !document.querySelector('#vms b, #vms img')")
