"""Every test runs against its own VMBUSOPS_HOME, so state never leaks between tests or users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def vmbusops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "vmbusops-home"
    home.mkdir()
    monkeypatch.setenv("VMBUSOPS_HOME", str(home))
    for var in ("VMBUSOPS_HOST", "VMBUSOPS_LAB", "VMBUSOPS_CREDENTIAL_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    yield home
