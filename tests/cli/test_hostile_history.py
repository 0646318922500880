"""Guest text read back from the journal is as hostile as it was live: ``logs`` and ``jobs show``
print a record's control characters, and a run's error quoting the guest, as visible escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.builders import VM, script, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey

HOSTILE = "a\x1b]0;TITLE\x07b \x1b[2Jc"


def test_logs_and_jobs_show_escape_what_the_guest_wrote(
    tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = PrivateKey.generate()
    trust_and_credential(key)
    monkeypatch.setenv("VMBUSOPS_LAB", str(write_lab(tmp_path, [VM("web01")])))
    steps = [script("evil", f'Write-Output "{HOSTILE}"\nWrite-Error "boom {HOSTILE}"')]
    ran = vmbusops("run", str(signed_bundle(tmp_path, key, vms=["web01"], steps=steps)))
    assert ran.returncode == 1, ran.stderr
    assert not any(ch in ran.stdout + ran.stderr for ch in "\x1b\x07"), ran.stdout
    for args in (("logs", "1"), ("jobs", "show", "1"), ("history", "--vm", "web01")):
        shown = vmbusops(*args)
        assert shown.returncode == 0, shown.stderr
        assert not any(ch in shown.stdout for ch in "\x1b\x07"), (args, shown.stdout)
        assert "\\x1b]0;TITLE\\x07b \\x1b[2Jc" in shown.stdout, (args, shown.stdout)
