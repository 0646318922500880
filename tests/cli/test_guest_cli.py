"""vmbusops vms / exec / copy / cred as an operator runs them: real exit codes, in this process
(tests.clirun) except where the process is the subject (Ctrl-C, a reader that goes away)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.clirun import vmbusops


def test_vms_json(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops("vms", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["vm"]: r["state"] for r in rows}["legacy01"] == "Off"
    assert {r["vm"]: r["guest_services"] for r in rows}["app01"] is False


def test_exec_json_is_ndjson_with_vm_stream_seq_time(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops(
        "exec", "--vm", "web01", "--vm", "web02", "--json", "--",
        "Write-Verbose 'v1' -Verbose; Write-Output 'o1'; Write-Warning 'w1'",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    for vm in ("web01", "web02"):
        mine = [line for line in lines if line["vm"] == vm and line["stream"] != "result"]
        assert [m["stream"] for m in mine] == ["verbose", "output", "warning", "state"]
        assert [m["seq"] for m in mine] == [1, 2, 3, 4]
        assert all(m["event"] == "record" and m["time"].endswith("+00:00") for m in mine)
        assert mine[0]["message"] == "v1" and mine[1]["value"] == "o1" and mine[3]["state"] == "Completed"


def test_exec_exit_codes(make_lab: Callable[..., Any]) -> None:
    make_lab()
    ok = vmbusops("exec", "--vm", "web01", "--", "Write-Output fine")
    assert ok.returncode == 0
    assert "web01 | fine" in ok.stdout
    guest_error = vmbusops("exec", "--vm", "web01", "--", "Write-Error 'bad thing'")
    assert guest_error.returncode == 1
    assert "bad thing" in guest_error.stdout
    off = vmbusops("exec", "--vm", "legacy01", "--vm", "web01", "--", "hostname")
    assert off.returncode == 1
    assert "legacy01: failed: legacy01: The virtual machine legacy01 is not in running state." in off.stderr
    assert "1 of 2 guest(s) succeeded" in off.stderr
    usage = vmbusops("exec", "--", "hostname")
    assert usage.returncode == 2
    assert "--vm NAME" in usage.stderr
    timed_out = vmbusops("exec", "--vm", "web01", "--timeout", "0.3", "--", "Start-Sleep -Seconds 30")
    assert timed_out.returncode == 1
    assert "timed out after 0.3s" in timed_out.stderr


def test_exec_all_runs_in_every_running_vm_and_names_the_others_skipped(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops("exec", "--all", "--json", "--", "hostname")
    assert proc.returncode == 0, proc.stderr  # legacy01 is off: skipped, not a failure
    vms = {json.loads(line)["vm"] for line in proc.stdout.splitlines()}
    assert vms == {"web01", "web02", "app01", "flaky01"}
    assert proc.stderr == "--all: skipped, not running: legacy01 (Off)\n"


def test_ctrl_c_stops_guest_pipelines_and_exits_130(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "exec", "--vm", "web01", "--json", "--",
         "foreach ($i in 1..100000) { Write-Output $i; Start-Sleep -Milliseconds 20 }"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert json.loads(first)["value"] == 1
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 15
    assert "interrupted, stopping guest pipelines" in err
    assert "Traceback" not in err


def test_copy_cli_names_the_fix_and_can_enable_guest_services(
    make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    make_lab()
    src = tmp_path / "f.txt"
    src.write_text("x", encoding="utf-8")
    refused = vmbusops("copy", "--vm", "app01", str(src), "C:\\f.txt")
    assert refused.returncode == 1
    assert "Guest Service Interface is disabled" in refused.stderr
    assert "Enable-VMIntegrationService" in refused.stderr
    done = vmbusops("copy", "--vm", "app01", "--enable-guest-services", str(src), "C:\\f.txt")
    assert done.returncode == 0, done.stderr
    assert "app01: copied f.txt" in done.stdout


def test_copy_to_a_bad_guest_path_is_one_usage_error_before_any_vm(
    make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    make_lab()
    src = tmp_path / "f.txt"
    src.write_text("x", encoding="utf-8")
    done = vmbusops("copy", "--vm", "web01", "--vm", "db01", str(src), "x.txt")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "vmbusops: guest destination 'x.txt' is not an absolute Windows path (a drive letter, a colon and a"
        " backslash)",
        "  hint: use an absolute Windows path such as C:\\Temp\\file.txt",
    ]


def test_cred_set_from_stdin_then_exec_with_it(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    password = lab.credential().password.reveal()
    stored = vmbusops("cred", "set", "tenant-a", "--username", "Administrator", "--password-stdin",
                      stdin=password + "\n")
    assert stored.returncode == 0, stored.stderr
    listed = vmbusops("cred", "list")
    assert "tenant-a\tAdministrator" in listed.stdout
    proc = vmbusops("exec", "--vm", "web01", "--credential", "tenant-a", "--", "Write-Output ok")
    assert proc.returncode == 0, proc.stderr
    bad = vmbusops("exec", "--vm", "web01", "--credential", "nope", "--", "Write-Output ok")
    assert bad.returncode == 2
    assert "vmbusops cred set nope" in bad.stderr
    for p in (stored, listed, proc, bad):
        assert password not in p.stdout + p.stderr


@pytest.mark.parametrize("args", [["--help"], ["exec", "--help"], ["vms", "--help"]])
def test_help_works(args: list[str]) -> None:
    shown = vmbusops(*args)
    assert shown.returncode == 0, shown.stderr
    # The help of the command asked for, not the group's or an error's.
    assert shown.stdout.startswith(" ".join(["Usage: vmbusops", *args[:-1]]) + " [OPTIONS]"), shown.stdout


def test_exec_json_ends_each_guest_with_its_verdict(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops(
        "exec", "--vm", "web01", "--vm", "legacy01", "--vm", "web02", "--json", "--timeout", "5", "--",
        "Write-Error 'soft'; 'after'",
    )
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    results = {line["vm"]: line for line in lines if line["stream"] == "result"}
    assert set(results) == {"web01", "legacy01", "web02"}
    # web01 ended Completed with exit code 0, yet it failed: the result line says so.
    web01 = results["web01"]
    assert (web01["ok"], web01["exit_code"], web01["errors"]) == (False, 0, 1)
    assert "soft" in web01["failure"]
    assert results["legacy01"]["ok"] is False and "not in running state" in results["legacy01"]["failure"]
    # Each guest's verdict is its last line.
    for vm in results:
        assert [line for line in lines if line["vm"] == vm][-1]["stream"] == "result"
    fine = vmbusops("exec", "--vm", "web01", "--json", "--", "'ok'")
    [verdict] = [json.loads(line) for line in fine.stdout.splitlines() if '"stream":"result"' in line]
    assert (verdict["ok"], verdict["exit_code"], verdict["failure"], fine.returncode) == (True, 0, None, 0)


def test_exec_json_reports_a_timed_out_guest(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops("exec", "--vm", "web01", "--timeout", "0.5", "--json", "--", "'before'; Start-Sleep -Seconds 30")
    assert proc.returncode == 1
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["stream"] == "result" and last["ok"] is False and "timed out" in last["failure"]


def test_a_reader_that_goes_away_gets_no_traceback(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "exec", "--vm", "web01", "--vm", "web02", "--json", "--",
         "1..5000 | ForEach-Object { \"line $_\" }"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # one line, then the reader leaves, as `| head -1` does
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141  # as for SIGPIPE, not 1 (a guest failed)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
