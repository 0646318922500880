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


SLOW_FEATURE_MOF = """
instance of MSFT_RoleResource as $MSFT_RoleResource1ref
{
ResourceID = "[WindowsFeature]Tools";
 Ensure = "Present";
 Name = "Web-Mgmt-Tools";
 ModuleName = "PsDesiredStateConfiguration";
 ModuleVersion = "1.0";
 ConfigurationName = "Demo";
};
"""


def test_the_dsc_operation_streams_the_lcm_lines_while_the_lcm_works(tmp_path: Path) -> None:
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(
        LAB_TEXT.replace('computer_name = "WEB01-LAB"',
                         'computer_name = "WEB01-LAB"\nfeatures = [{ name = "Web-Mgmt-Tools", install_seconds = 1.5 }]'),
        encoding="utf-8",
    )  # fmt: skip
    lab = load_lab(lab_file)
    state = tmp_path / "state"
    stage = HostStore(lab, state).guest_root(lab.find("web01")) / "C" / "stage"  # type: ignore[arg-type]
    stage.mkdir(parents=True)
    (stage / "localhost.mof").write_text(SLOW_FEATURE_MOF, encoding="utf-8")
    request = {"op": "dsc", "vm": "web01", "cmdlet": "Start-DscConfiguration", "location": "C:/stage",
               "parameters": {"Path": ".", "Wait": True, "Force": True}}  # fmt: skip
    lines: list[tuple[dict[str, Any], bool]] = []
    with subprocess.Popen(
        [sys.executable, "-m", "vmbusops.pwshlab.labctl", "--state-dir", str(state), "--lab", str(lab_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request))
        proc.stdin.close()
        for line in proc.stdout:
            # Whether the LCM was still at work when the line could be read.
            lines.append((json.loads(line), proc.poll() is None))
        assert proc.wait(timeout=60) == 0
    verbose = [(body["verbose"], running) for body, running in lines if "verbose" in body]
    # A relative -Path resolves against the caller's location in the guest, as in PowerShell.
    assert "SendConfigurationApply" in verbose[0][0]
    assert verbose[0][1], "the first line came only when the LCM had finished"
    assert any("[ Start  Set      ]  [[WindowsFeature]Tools]" in text for text, _ in verbose)
    assert lines[-1] == ({"end": True}, lines[-1][1])


def test_the_dsc_operation_refuses_what_the_simulator_does_not_model(tmp_path: Path) -> None:
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(LAB_TEXT, encoding="utf-8")
    state = tmp_path / "state"

    def dsc(vm: str, cmdlet: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [sys.executable, "-m", "vmbusops.pwshlab.labctl", "--state-dir", str(state), "--lab", str(lab_file)],
            input=json.dumps({"op": "dsc", "vm": vm, "cmdlet": cmdlet, "parameters": parameters}),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return [json.loads(line) for line in proc.stdout.splitlines()]

    [error, end] = dsc("web01", "Start-DscConfiguration", {"Path": "C:\\x", "Wait": True, "CimSession": "[x]"})
    assert error["error"]["fqid"] == "NotSupportedBySimulator"
    assert "Start-DscConfiguration -CimSession" in error["error"]["message"]
    assert end == {"end": True}
    [error, _] = dsc("web01", "Invoke-DscResource", {})
    assert "the DSC cmdlet Invoke-DscResource" in error["error"]["message"]
    [error, _] = dsc("legacy01", "Get-DscConfigurationStatus", {})
    assert error["error"]["message"] == pserrors.REMOTE_SESSION_ENDED
