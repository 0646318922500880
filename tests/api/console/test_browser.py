"""The web console in a real browser (headless Chromium) against a real agent over the simulator.

Selenium blocks; these tests are plain functions (the agent is another process, so nothing waits
on this one's event loop). Waits poll the page for what must appear, with no timing assertion.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from tests.api.conftest import Agent
from tests.builders import script

LOOP = '1..{n} | ForEach-Object {{ Write-Output "line $_"; Start-Sleep -Milliseconds {ms} }}'
HOSTILE = "<script>alert(1)</script><img src=x onerror=window.pwned=1><b>bold</b>&amp;"
WAIT = 60.0


def submit_sync(agent: Agent, path: Path, who: str) -> int:
    response = httpx.post(
        f"{agent.url}/v1/jobs",
        content=path.read_bytes(),
        headers={**agent.headers(who), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    job_id: int = response.json()["job"]["id"]
    return job_id


def job_state(agent: Agent, job_id: int) -> str:
    response = httpx.get(f"{agent.url}/v1/jobs/{job_id}", headers=agent.headers(), timeout=30)
    state: str = response.json()["job"]["state"]
    return state


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    """Poll until ``condition`` holds; the console redraws rows as events come, so an element
    found a moment ago may be gone (stale): that is polled again, like one not there yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, WAIT, poll_frequency=0.1, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    return wait.until(condition, message=f"waiting for {what}")


def click(driver: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, f"{css} to click")


def attributes(driver: Any, css: str, name: str) -> list[str]:
    values: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))", css, name
    )
    return values


def sign_in(driver: Any, agent: Agent, who: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{agent.url}/console/")
    token = wait_for(driver, lambda d: d.find_element(By.ID, "token") if d.find_element(By.ID, "sign-in").is_displayed() else None, "the sign-in form")
    token.send_keys(agent.tokens[who])
    driver.find_element(By.ID, "sign-in-button").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "nav").is_displayed(), "the console after sign-in")


def record_texts(driver: Any, vm: str | None = None) -> list[str]:
    script_text = (
        "return [...document.querySelectorAll('#records .rec')]"
        ".filter(r => arguments[0] === null || r.dataset.vm === arguments[0])"
        ".map(r => r.querySelector('.text').textContent)"
    )
    texts: list[str] = driver.execute_script(script_text, vm)
    return texts


def run_rows(driver: Any) -> dict[str, dict[str, str]]:
    """Each VM row of the job view, read in one go (the rows are redrawn as events come)."""
    rows: dict[str, dict[str, str]] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#runs-body tr')].map(r => [r.dataset.vm,"
        " {text: r.textContent, state: r.querySelector('.run-state').textContent}]))"
    )
    return rows


def job_badge(driver: Any) -> str:
    text: str = driver.execute_script("const b = document.querySelector('.job-head .state'); return b ? b.textContent : ''")
    return text


def test_job_list_to_live_records_to_cancel(agent: Agent, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    job_id = submit_sync(agent, agent.bundle(["a-web01", "a-web02"], [script("count", LOOP.format(n=3000, ms=40))]), "tenant_a")
    sign_in(browser, agent, "tenant_a")

    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#jobs-body tr[data-job='{job_id}'] .state").text in ("pending", "in-progress"), "the job in the list")
    click(browser, f"#jobs-body tr[data-job='{job_id}'] a.job-link")

    # The job's VMs with their state and step, then records arriving live for each VM.
    wait_for(browser, lambda d: len(run_rows(d)) == 2, "both VMs' rows")
    wait_for(browser, lambda d: "line 5" in record_texts(d, "a-web02"), "a-web02's records")
    wait_for(
        browser,
        lambda d: all(r["state"] == "in-progress" and "count" in r["text"] for r in run_rows(d).values()),
        "both VMs in progress in step count",
    )
    assert set(run_rows(browser)) == {"a-web01", "a-web02"}
    seen = len(record_texts(browser, "a-web02"))
    wait_for(browser, lambda d: len(record_texts(d, "a-web02")) > seen + 5, "more records while watching")
    lines = record_texts(browser, "a-web02")
    assert lines[: 5] == [f"line {i}" for i in range(1, 6)]

    # One VM's records only: the other's lines are hidden, not gone.
    click(browser, "#vm-tabs button[data-vm='a-web01']")
    visible = set(browser.execute_script(
        "return [...document.querySelectorAll('#records .rec')].filter(r => r.offsetParent !== null).map(r => r.dataset.vm)"
    ))
    assert visible == {"a-web01"}
    if os.environ.get("VMBUSOPS_CONSOLE_SCREENSHOT"):
        click(browser, "#vm-tabs button:first-child")
        browser.save_screenshot(os.environ["VMBUSOPS_CONSOLE_SCREENSHOT"])

    click(browser, "#cancel-job")
    wait_for(browser, lambda d: job_badge(d) == "cancelled", "the job cancelled")
    assert {vm: r["state"] for vm, r in run_rows(browser).items()} == {"a-web01": "cancelled", "a-web02": "cancelled"}
    assert browser.find_elements(By.ID, "cancel-job") == []
    assert job_state(agent, job_id) == "cancelled"
    assert len(record_texts(browser, "a-web02")) < 3000  # stopped, not run to its end


def test_hostile_record_renders_as_text(agent: Agent, browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    text = (
        f"Write-Output '{HOSTILE}'; Write-Warning '{HOSTILE}'; Write-Error '{HOSTILE}'; "
        f"Write-Verbose '{HOSTILE}' -Verbose"
    )
    job_id = submit_sync(agent, agent.bundle(["a-web01"], [script("markup", text)]), "admin")
    sign_in(browser, agent, "admin")
    browser.get(f"{agent.url}/console/#/jobs/{job_id}")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#records[data-stream='ended']"), "the job's end")

    lines = browser.find_elements(By.CSS_SELECTOR, "#records .rec")
    hostile = [line for line in lines if HOSTILE in line.text]
    streams = {line.get_attribute("class") for line in hostile}
    assert {"rec s-output", "rec s-warning", "rec s-error"} <= streams, [line.text for line in lines]
    for line in hostile:
        assert line.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent") == HOSTILE
    # Each stream in a colour of its own (the style sheet applied, not only the class set).
    colours = browser.execute_script(
        "return ['s-output', 's-warning', 's-error'].map(c => getComputedStyle(document.querySelector('#records .rec.' + c)).color)"
    )
    assert len(set(colours)) == 3, colours
    # The markup stayed text: no element was made from it, no script ran, no alert opened.
    assert browser.find_elements(By.CSS_SELECTOR, "#records script, #records img, #records b") == []
    assert browser.find_elements(By.CSS_SELECTOR, "body script:not([src]), img") == []
    assert browser.execute_script("return window.pwned === undefined") is True
    try:
        alert = browser.switch_to.alert
    except NoAlertPresentException:
        alert = None
    assert alert is None


def test_a_tenant_never_sees_another_tenants_job(agent: Agent, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    theirs = submit_sync(agent, agent.bundle(["b-db01"], [script("b-only", "Write-Output 'tenant b secret'")]), "tenant_b")
    mine = submit_sync(agent, agent.bundle(["a-web01"], [script("a-only", "Write-Output 'tenant a'")]), "tenant_a")
    sign_in(browser, agent, "tenant_a")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#jobs-body tr[data-job='{mine}']"), "tenant A's job")
    other = submit_sync(agent, agent.bundle(["a-web02"], [script("a-two", "Write-Output 'tenant a two'")]), "tenant_a")
    wait_for(browser, lambda d: attributes(d, "#jobs-body tr", "data-job") == [str(other), str(mine)], "tenant A's jobs only")

    # Filtered by VM (typed into the form): only the job that targets it.
    browser.find_element(By.ID, "filter-vm").send_keys("A-WEB01")
    click(browser, "#filter-apply")
    wait_for(browser, lambda d: attributes(d, "#jobs-body tr", "data-job") == [str(mine)], "the VM filter")
    assert "vm=A-WEB01" in browser.current_url

    # Asked for by id, the other tenant's job is "not found", its records never shown.
    browser.get(f"{agent.url}/console/#/jobs/{theirs}")
    wait_for(browser, lambda d: f"job {theirs}" in d.find_element(By.ID, "status").text, "the refusal")
    assert "tenant b secret" not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_elements(By.CSS_SELECTOR, "#records .rec") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#runs-body tr") == []

    # The host's VMs: only tenant A's.
    browser.get(f"{agent.url}/console/#/vms")
    wait_for(browser, lambda d: attributes(d, "#vms-body tr[data-vm]", "data-vm"), "the VM list")
    vms = sorted(attributes(browser, "#vms-body tr[data-vm]", "data-vm"))
    assert vms == ["a-web01", "a-web02"]


def dsc_bundle(agent: Agent, vms: list[str]) -> Path:
    """The scaffold's configuration (a custom file resource) with a Windows feature after it."""
    from tests.builders import bundle_doc, write_bundle_source

    from vmbusops.bundle.build import build_bundle, sign_bundle
    from vmbusops.bundle.scaffold import EXAMPLE_FILES
    from vmbusops.cli.demo import IIS_RESOURCE

    files = {k: v for k, v in EXAMPLE_FILES.items() if k.startswith("dsc/")}
    files["dsc/localhost.mof"] += IIS_RESOURCE
    step = {"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"], "modules": ["dsc/modules/VmbusOpsDemo"]}
    source = write_bundle_source(agent.bundles / "dsc-src", bundle_doc(vms, [step], name="dsc-console"), files)
    out = agent.bundles / "dsc.vmb"
    build_bundle(source, out)
    sign_bundle(out, agent.key)
    return out


def test_dsc_per_resource_progress_is_shown_live(agent_factory: Any, browser: Any) -> None:
    from tests.builders import VM

    # Installing the feature takes long enough to be seen, then the job is cancelled.
    slow = {"features": [{"name": "Web-Server", "installed": False, "install_seconds": 600}]}
    agent = agent_factory(vms=[VM("a-web01", more=slow), VM("a-web02")])
    sign_in(browser, agent, "tenant_a")
    job_id = submit_sync(agent, dsc_bundle(agent, ["a-web01"]), "tenant_a")
    browser.get(f"{agent.url}/console/#/jobs/{job_id}")

    def progress(driver: Any) -> dict[str, str] | None:
        got: dict[str, str] | None = driver.execute_script(
            "const p = document.querySelector('#runs-body tr[data-vm=\"a-web01\"] progress');"
            " return p ? {value: p.getAttribute('value'), max: p.getAttribute('max'),"
            " text: p.parentElement.textContent, step: p.closest('tr').querySelector('.run-step').textContent} : null"
        )
        return got if got and "[WindowsFeature]IIS" in got["text"] else None

    shown = wait_for(browser, progress, "the DSC progress of a-web01")
    assert shown == {"value": "1", "max": "2", "text": "1/2 [WindowsFeature]IIS: 1 changed", "step": "configure"}
    click(browser, "#cancel-job")
    wait_for(browser, lambda d: job_badge(d) == "cancelled", "the job cancelled")
