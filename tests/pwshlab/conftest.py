"""Fixtures of the pwsh-lab tests (the lab and its host: :mod:`pwshlab_support`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pwshlab_support import LAB_TEXT, PwshLab


@pytest.fixture
def pwsh_lab(pwsh_path: str, tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch) -> PwshLab:
    monkeypatch.setenv("VMBUSOPS_PWSH", pwsh_path)
    path = tmp_path / "lab.toml"
    path.write_text(LAB_TEXT, encoding="utf-8")
    monkeypatch.setenv("VMBUSOPS_LAB", str(path))
    return PwshLab(path, vmbusops_home)

