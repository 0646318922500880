"""labctl, the lab module's decisions, as a process: one JSON request in, one answer out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pwshlab_support import LAB_TEXT

from vmbusops.sim import pserrors
from vmbusops.sim.lab import load_lab
from vmbusops.sim.state import HostStore


def labctl(state: Path, lab: Path, request: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "vmbusops.pwshlab.labctl", "--state-dir", str(state), "--lab", str(lab)],
        input=json.dumps(request), capture_output=True, text=True, timeout=60, check=False,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr


def test_open_guest_checks_in_the_simulators_order_and_never_echoes_the_password(tmp_path: Path) -> None:
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(LAB_TEXT, encoding="utf-8")
    lab = load_lab(lab_file)
    state = tmp_path / "state"
    user, password = lab.credential("web01")

    code, answer, raw = labctl(state, lab_file, {"op": "open-guest", "vm_name": "web01", "user": user,
                                                  "password": "Wrong-" + password})
    assert code == 0
    assert answer["errors"][0]["message"] == pserrors.CREDENTIAL_INVALID
    assert password not in raw

    code, answer, raw = labctl(state, lab_file, {"op": "open-guest", "vm_name": "WEB01", "user": f".\\{user}",
                                                  "password": password})
    assert code == 0 and answer["errors"] == []
    guest = answer["guest"]
    assert (guest["name"], guest["computer_name"], guest["user"]) == ("web01", "WEB01-LAB", "Administrator")
    store = HostStore(lab, state)
    assert Path(guest["root"]) == store.guest_root(lab.find("web01")) / "C"  # type: ignore[arg-type]
    assert Path(guest["root"], "inetpub", "wwwroot", "index.html").is_file()
    assert password not in raw

    _, answer, _ = labctl(state, lab_file, {"op": "open-guest", "vm_name": "legacy01", "user": user,
                                            "password": password})
    assert answer["errors"][0]["fqid"] == pserrors.invoke_vm_not_running("legacy01").fqid


def test_a_guest_whose_sessions_fail_to_connect(tmp_path: Path) -> None:
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(LAB_TEXT + '\n[vm.faults]\nconnect_fails = true\n', encoding="utf-8")  # on app01
    lab = load_lab(lab_file)
    user, password = lab.credential("app01")
    _, answer, _ = labctl(tmp_path / "state", lab_file, {"op": "open-guest", "vm_name": "app01", "user": user,
                                                         "password": password})
    expected = pserrors.session_connect_failed("app01")
    assert [(e["message"], e["fqid"]) for e in answer["errors"]] == [(expected.message, expected.fqid)]
    assert "guest" not in answer


def test_a_request_it_cannot_answer_is_fatal(tmp_path: Path) -> None:
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(LAB_TEXT, encoding="utf-8")
    code, answer, _ = labctl(tmp_path / "state", lab_file, {"op": "format-c"})
    assert code == 2 and answer == {"fatal": "unknown operation 'format-c'"}
