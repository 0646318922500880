"""`jobs --vm` and `history --vm` take a name or a glob, matched case-insensitively as `exec --vm`
and a bundle's targets are (vmbusops.vm_names), against the VMs the journal (or the agent) has
runs on; a plain name keeps its exact (any case) match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.builders import VM, script, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey


def ran(tmp_path: Path, key: PrivateKey, vms: list[str], name: str, text: str = "'hi'") -> None:
    done = vmbusops("run", str(signed_bundle(tmp_path, key, vms=vms, steps=[script("s", text)], name=name)))
    assert done.returncode in (0, 1), done.stderr


def lines(*args: str) -> list[dict[str, object]]:
    shown = vmbusops(*args, "--json")
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


def test_jobs_and_history_take_a_glob_as_exec_does(
    tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMBUSOPS_LAB", str(write_lab(tmp_path, [VM("web01"), VM("web02"), VM("db01")])))
    key = PrivateKey.generate()
    trust_and_credential(key)
    ran(tmp_path, key, ["web01", "web02"], "a")  # job 1
    ran(tmp_path, key, ["db01"], "b")  # job 2
    ran(tmp_path, key, ["web02", "db01"], "c", "'x'; exit 3")  # job 3: both fail

    assert [j["id"] for j in lines("jobs", "--vm", "WEB*")] == [3, 1]
    assert [j["id"] for j in lines("jobs", "--vm", "db0?")] == [3, 2]
    assert [j["id"] for j in lines("jobs", "--vm", "web0[1]")] == [1]
    assert [j["id"] for j in lines("jobs", "--vm", "web*", "--state", "failed")] == [3]
    assert lines("jobs", "--vm", "zz*") == []
    assert [j["id"] for j in lines("jobs", "--vm", "WEB01")] == [1]  # a name: as before

    history = lines("history", "--vm", "web*")
    assert [(h["job"], h["vm"], h["state"]) for h in history] == [
        (3, "web02", "failed"), (1, "web01", "success"), (1, "web02", "success"),
    ]  # fmt: skip
    # The same shape as a name's history, entry for entry.
    assert history[0] == lines("history", "--vm", "web02")[0]
    assert [(h["job"], h["vm"]) for h in lines("history", "--vm", "*", "--state", "failed")] == [
        (3, "web02"), (3, "db01"),
    ]  # fmt: skip
    assert [h["job"] for h in lines("history", "--vm", "*", "--limit", "2")] == [3, 3]
    text = vmbusops("history", "--vm", "web*").stdout
    assert "web01" in text and "web02" in text
    assert vmbusops("history", "--vm", "zz*").stdout == "no runs on a VM matching 'zz*'\n"
