"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium.

``./scripts/test`` installs both when missing and sets ``VMBUSOPS_BROWSER=required``: then a
missing browser fails the tests. Run by hand without the bootstrap, they are skipped, saying why.
No browser or driver is ever downloaded: Selenium is given both paths.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)  # fmt: skip


def _find(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((f for f in fallbacks if Path(f).exists()), None)


def _unavailable(why: str) -> None:
    if os.environ.get("VMBUSOPS_BROWSER") == "required":
        pytest.fail(f"{why} (./scripts/test should have installed it; see scripts/_bootstrap.sh)")
    pytest.skip(f"{why}: run ./scripts/test, which installs Debian's chromium and chromium-driver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = _find("chromium", "/usr/bin/chromium")
    driver_path = _find("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or driver_path is None:
        _unavailable("no chromium or chromedriver on this machine")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    options = Options()
    options.binary_location = str(chromium)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    try:
        yield driver
    finally:
        driver.quit()
