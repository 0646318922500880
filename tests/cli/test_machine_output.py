"""Output read by programs and kept in files: nothing wrapped or cut when stdout is not a terminal,
the same keys and ISO 8601 times in every JSON line, a failure ``code``, and whole lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.builders import VM, script, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.errors import FailureCode, VmbusOpsError


def test_tables_are_not_cut_or_wrapped_off_a_terminal(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops("vms", env={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert len(rows) == 6  # a header and a row per VM: nothing wrapped onto a line of its own
    assert all(len(row.split()[-1]) == 36 for row in rows[1:]), rows  # each VM's whole id
    assert "…" not in proc.stdout
    assert "\x1b[" not in proc.stdout


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def results(text: str) -> dict[str, dict[str, Any]]:
    return {line["vm"]: line for line in ndjson(text) if line["event"] == "result"}


@pytest.mark.slow
def test_exec_reports_the_exit_code_and_fails_on_it_unless_told_to_ignore_it(make_lab: Callable[..., Any]) -> None:
    make_lab()
    failed = vmbusops("exec", "--vm", "web01", "--json", "--", "'a'; exit 3")
    assert failed.returncode == 1, failed.stderr
    assert {k: results(failed.stdout)["web01"][k] for k in ("ok", "exit_code", "code")} == {
        "ok": False, "exit_code": 3, "code": "ExitCode",
    }  # fmt: skip
    ignored = vmbusops("exec", "--vm", "web01", "--ignore-exit-code", "--json", "--", "'a'; exit 3")
    assert ignored.returncode == 0, ignored.stderr
    assert {k: results(ignored.stdout)["web01"][k] for k in ("ok", "exit_code", "code")} == {
        "ok": True, "exit_code": 3, "code": None,
    }  # fmt: skip
    # An error record still fails the guest: only the exit code is ignored.
    errors = vmbusops("exec", "--vm", "web01", "--ignore-exit-code", "--json", "--", "Write-Error 'boom'; exit 3")
    assert errors.returncode == 1
    assert results(errors.stdout)["web01"]["code"] == "ScriptFailed"
    text = vmbusops("exec", "--vm", "web01", "--", "'a'; exit 3")
    assert text.returncode == 1 and "exit code 3" in text.stderr
    # A terminating error exits 1 too, but its cause is the error: ScriptFailed, naming it.
    thrown = results(vmbusops("exec", "--vm", "web01", "--json", "--", "throw 'boom'").stdout)["web01"]
    assert (thrown["code"], thrown["exit_code"]) == ("ScriptFailed", 1) and "boom" in thrown["failure"], thrown


def test_every_failed_guest_has_a_stable_code(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops(
        "exec", "--vm", "web01", "--vm", "legacy01", "--timeout", "1", "--json", "--",
        "Start-Sleep -Seconds 30",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    got = results(proc.stdout)
    assert (got["web01"]["code"], got["legacy01"]["code"]) == ("Timeout", "VMNotRunning")
    for line in ndjson(proc.stdout):
        assert list(line)[:3] == ["vm", "event", "stream"], line
        assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)


def test_copy_json_gives_each_failed_vm_its_stable_code(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    make_lab()
    source = tmp_path / "motd.txt"
    source.write_text("hello\n")
    ran = vmbusops("copy", "--vm", "web01", "--vm", "app01", "--vm", "legacy01", "--json", str(source), "C:\\Temp\\m.txt")
    assert ran.returncode == 1, ran.stderr
    got = {line["vm"]: line for line in ndjson(ran.stdout)}
    assert {vm: (line["ok"], line["code"]) for vm, line in got.items()} == {
        "web01": (True, None), "app01": (False, "GuestServicesDisabled"), "legacy01": (False, "VMNotRunning"),
    }  # fmt: skip


def test_run_logs_and_jobs_give_the_exit_code_and_failure_code_of_each_run_and_step(
    vmbusops_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = PrivateKey.generate()
    trust_and_credential(key)
    monkeypatch.setenv("VMBUSOPS_LAB", str(write_lab(tmp_path, [VM("web01"), VM("legacy01", state="Off")])))
    steps = [script("hello", "'hello'"), script("fails", "'about to exit'\nexit 3"), script("never", "'never'")]
    bundle = signed_bundle(tmp_path, key, vms=["web01", "legacy01"], steps=steps)
    ran = vmbusops("run", "--json", str(bundle))
    assert ran.returncode == 1, ran.stderr
    lines = ndjson(ran.stdout)
    assert {line["event"] for line in lines} == {"job", "run", "record", "summary"}
    for line in lines:
        if "time" in line:
            assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)
    assert [r["value"] for r in lines if r["event"] == "record" and r["stream"] == "output"] == ["hello", "about to exit"]
    ended = {line["vm"]: line for line in lines if line["event"] == "run" and line["state"] == "failed"}
    assert (ended["web01"]["code"], ended["legacy01"]["code"]) == ("ExitCode", "VMNotRunning")
    [summary] = [line for line in lines if line["event"] == "summary"]
    runs = {r["vm"]: r for r in summary["runs"]}
    assert runs["web01"]["code"] == "ExitCode"
    assert [(s["name"], s["state"], s["code"], s["exit_code"]) for s in runs["web01"]["steps"]] == [
        ("hello", "success", None, 0),
        ("fails", "failed", "ExitCode", 3),
        ("never", "skipped", None, None),
    ]
    assert runs["legacy01"]["code"] == "VMNotRunning"
    assert datetime.fromisoformat(runs["web01"]["finished_at"]) >= datetime.fromisoformat(runs["web01"]["started_at"])

    job = summary["job"]
    shown = json.loads(vmbusops("jobs", "show", str(job), "--json").stdout)
    assert {r["vm"]: r["code"] for r in shown["runs"]} == {"web01": "ExitCode", "legacy01": "VMNotRunning"}
    assert shown["runs"] == summary["runs"]
    logs = ndjson(vmbusops("logs", str(job), "--json").stdout)
    assert [list(r)[:6] for r in logs] == [["vm", "event", "stream", "seq", "time", "step"]] * len(logs)
    live = [r for r in lines if r["event"] == "record"]
    assert [(r["vm"], r["seq"], r["time"]) for r in logs] == [(r["vm"], r["seq"], r["time"]) for r in live]


def test_the_readme_lists_every_failure_code_and_every_error_class_has_one() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert listed == {code.value for code in FailureCode}

    def classes(cls: type[VmbusOpsError]) -> list[type[VmbusOpsError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in classes(sub))]

    import vmbusops.guestops.dsc  # noqa: F401  (its error classes)

    for cls in classes(VmbusOpsError):
        assert isinstance(cls.code, FailureCode), cls


LONG = "x" * 6000  # longer than a pipe's atomic write and than a text stream's chunk


@pytest.mark.slow
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_lines_from_many_guests_at_once_are_never_torn_in_a_file(
    vmbusops_home: Path, tmp_path: Path, as_json: bool
) -> None:
    """A real process writing stdout and stderr into one file (``> out 2>&1``), 16 guests at
    once with different latencies, each printing long lines: every line of the file is whole."""
    vms = [VM(f"vm{i:02d}", latency_ms=(i * 7) % 40) for i in range(16)]
    vms.append(VM("off01", state="Off"))  # named, so tried: a failure line on stderr, into the same file
    lab = write_lab(tmp_path, vms, password_seed="torn-lines")  # lab-admin is every guest's
    env = {**os.environ, "VMBUSOPS_LAB": str(lab), "VMBUSOPS_HOME": str(vmbusops_home), "NO_COLOR": "1"}
    script_text = '1..60 | ForEach-Object { Write-Output "line $_ ' + LONG + '" }'
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.run(
            [sys.executable, "-m", "vmbusops", "exec", "--vm", "vm*", "--vm", "off01", *(["--json"] if as_json else []),
             "--", script_text],
            env=env, stdout=sink, stderr=sink, timeout=300, check=False,
        )  # fmt: skip
    assert proc.returncode == 1
    lines = out.read_text(encoding="utf-8").splitlines()
    records = 0
    for line in lines:
        if as_json:
            obj = json.loads(line)  # a torn line is not JSON
            if obj["event"] == "record" and obj["stream"] == "output":
                assert re.fullmatch(r"line \d+ " + LONG, obj["value"]), obj["vm"]
                records += 1
        elif "xxxxxxxx" in line:  # any part of a guest's long line is on one whole line of its own
            assert re.fullmatch(r"vm\d\d +\| line \d+ " + LONG, line), line[:80]
            records += 1
        else:  # the failed guest's record and verdict, and the summary, on their own lines
            assert line.startswith(("off01", "  hint: ", "16 of 17 guest(s) succeeded")), line
    assert records == 16 * 60
