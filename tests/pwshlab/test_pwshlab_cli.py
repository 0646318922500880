"""The command line with --host pwsh-lab: the whole product, each command its own real PowerShell
(the command itself runs in this process: tests.clirun)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pwshlab_support import PwshLab
from tests.builders import bundle_doc, write_bundle_source
from tests.clirun import Ran
from tests.clirun import vmbusops as run_cli

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import StepKind
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy

pytestmark = pytest.mark.pwsh


def vmbusops(command: str, *args: str) -> Ran:
    """``vmbusops COMMAND --host pwsh-lab ...`` (in this process; the PowerShell is real)."""
    return run_cli(command, "--host", "pwsh-lab", *args)


def test_vms_copy_and_exec_all(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    vms = vmbusops("vms", "--json")
    assert vms.returncode == 0, vms.stderr
    rows = {row["vm"]: row for row in map(json.loads, vms.stdout.splitlines())}
    assert (rows["legacy01"]["state"], rows["app01"]["guest_services"]) == ("Off", False)

    payload = tmp_path / "motd.txt"
    payload.write_text("managed over the VMBus\n", encoding="utf-8")
    copied = vmbusops("copy", "--vm", "web02", str(payload), "C:\\ProgramData\\vmbusops\\motd.txt")
    assert copied.returncode == 0, copied.stderr
    assert pwsh_lab.guest_file("web02", "ProgramData", "vmbusops", "motd.txt").read_text(encoding="utf-8") == (
        "managed over the VMBus\n"
    )

    # Every VM: records live as NDJSON, an exit code per VM from the guest invoker.
    proc = vmbusops(
        "exec", "--all", "--json", "--",
        "Write-Output \"$(hostname) $env:TEMP\"; if ($env:COMPUTERNAME -eq 'WEB02') { exit 5 }",
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1, proc.stderr  # web02 exits 5; legacy01 is off, so --all skips it
    assert "--all: skipped, not running: legacy01 (Off)" in proc.stderr
    by_vm: dict[str, list[dict[str, object]]] = {}
    verdicts = {str(line["vm"]): line for line in lines if line["stream"] == "result"}
    for line in lines:
        if line["stream"] != "result":
            by_vm.setdefault(str(line.get("vm")), []).append(line)
    assert [m["value"] for m in by_vm["web01"] if m["stream"] == "output"] == ["WEB01-LAB C:\\Windows\\Temp"]
    assert [m["value"] for m in by_vm["web02"] if m["stream"] == "output"] == ["WEB02 C:\\Windows\\Temp"]
    for vm in ("web01", "web02", "app01"):
        assert [m["seq"] for m in by_vm[vm]] == list(range(1, len(by_vm[vm]) + 1))
    exit_codes = {vm: [m.get("exit_code") for m in mine if m["stream"] == "state"] for vm, mine in by_vm.items()}
    assert exit_codes == {"web01": [0], "web02": [5], "app01": [0]}
    assert {vm: (v["ok"], v["exit_code"]) for vm, v in verdicts.items()} == {
        "web01": (True, 0), "web02": (False, 5), "app01": (True, 0),
    }
    # Named, a VM that is off is tried, and refused with Invoke-Command's own error.
    off = vmbusops("exec", "--vm", "legacy01", "--json", "--", "hostname")
    assert off.returncode == 1, off.stderr
    off_lines = [json.loads(line) for line in off.stdout.splitlines()]
    assert [(v["ok"], v["exit_code"]) for v in off_lines if v["stream"] == "result"] == [(False, None)]
    [refusal] = [m for m in off_lines if m["stream"] == "error"]
    assert refusal["message"] == "The virtual machine legacy01 is not in running state."
    assert str(refusal["fqid"]).startswith("InvalidVMState,Microsoft.PowerShell.Commands.InvokeCommandCommand")
    assert pwsh_lab.lab.credential("web01")[1] not in proc.stdout + proc.stderr + off.stdout + off.stderr


def test_a_signed_bundle_runs_on_pwsh_lab(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("web*",), credentials=("lab-admin",), steps=frozenset(StepKind), threshold=1)
    save_trust_policy(TrustPolicy().with_key(TrustedKey(name="lab", public=key.public_key()), scope), trust_policy_path())
    steps = [
        {"name": "copy-setting", "kind": "copy", "source": "files/setting.txt",
         "destination": "C:\\ProgramData\\app\\setting.txt"},
        {"name": "install", "kind": "script", "allow_reboot": True, "max_reboots": 1,
         "inline": "Get-Content -LiteralPath 'C:\\ProgramData\\app\\setting.txt'\nexit 3010"},
        {"name": "reboot", "kind": "reboot"},
        {"name": "ready", "kind": "wait-ready"},
        {"name": "report", "kind": "script", "inline": "Write-Output \"up on $(hostname)\""},
    ]
    source = write_bundle_source(
        tmp_path / "bundle", bundle_doc(["web01"], steps, name="lab-run"), {"files/setting.txt": "setting=1\n"}
    )
    bundle = tmp_path / "lab-run.vmb"
    build_bundle(source, bundle)
    sign_bundle(bundle, key)

    run = vmbusops("run", str(bundle), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    values = [line.get("value") for line in lines if line.get("stream") == "output"]
    assert "setting=1" in values
    assert "up on WEB01-LAB" in values
    assert pwsh_lab.guest_file("web01", "ProgramData", "app", "setting.txt").is_file()
    assert pwsh_lab.lab.credential("web01")[1] not in run.stdout + run.stderr


def test_half_a_surrogate_pair_in_guest_output_is_kept_as_a_replacement_character(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    """A .NET string may hold a UTF-16 surrogate without its pair; such a record once stopped the
    journal's writer (UTF-8 cannot hold it), which took down the agent and every job on it, and
    `exec` ended in a traceback. It is U+FFFD now, as a Windows console shows it."""
    script = '"before"; "a" + [char]0xD800 + "b"; [char]0xDC00; "x" + [char]0xD83D + [char]0xDE00; "after"'
    ran = vmbusops("exec", "--vm", "web01", "--json", "--", script)
    assert ran.returncode == 0, ran.stderr[-3000:]
    wanted = ["before", "a\ufffdb", "\ufffd", "x\U0001f600", "after"]
    assert [line["value"] for line in map(json.loads, ran.stdout.splitlines()) if line["stream"] == "output"] == wanted

    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("web*",), credentials=("lab-admin",), steps=frozenset(StepKind), threshold=1)
    save_trust_policy(TrustPolicy().with_key(TrustedKey(name="lab", public=key.public_key()), scope), trust_policy_path())
    source = write_bundle_source(
        tmp_path / "bundle", bundle_doc(["web01"], [{"name": "emit", "kind": "script", "inline": script}], name="halves"), {}
    )
    bundle = tmp_path / "halves.vmb"
    build_bundle(source, bundle)
    sign_bundle(bundle, key)
    run = vmbusops("run", str(bundle))
    assert run.returncode == 0, run.stderr[-3000:]
    logs = run_cli("logs", "1", "--json")
    assert logs.returncode == 0, logs.stderr
    assert [line["value"] for line in map(json.loads, logs.stdout.splitlines()) if line["stream"] == "output"] == wanted


def test_a_patch_step_is_refused_before_anything_runs_and_the_bundle_is_not_used_up(
    pwsh_lab: PwshLab, tmp_path: Path
) -> None:
    """The pwsh-lab's guests have no Windows Update Agent: a patch step failed there only after
    the steps before it ran and its bundle was used up. It is refused before the job is made."""
    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("web*",), credentials=("lab-admin",), steps=frozenset(StepKind), threshold=1)
    save_trust_policy(TrustPolicy().with_key(TrustedKey(name="lab", public=key.public_key()), scope), trust_policy_path())
    steps = [
        {"name": "first", "kind": "script", "inline": "Write-Output 'ran'"},
        {"name": "updates", "kind": "patch", "check_only": True},
    ]
    source = write_bundle_source(tmp_path / "bundle", bundle_doc(["web01"], steps, name="lab-patch"))
    bundle = tmp_path / "lab-patch.vmb"
    build_bundle(source, bundle)
    sign_bundle(bundle, key)

    refused = vmbusops("run", str(bundle))
    assert refused.returncode == 2, refused
    assert refused.stdout == "" and len(refused.stderr.splitlines()) == 2, refused.stderr
    assert "step updates is a patch step, which this host cannot run: " in refused.stderr
    assert "--host sim" in refused.stderr
    assert run_cli("jobs", "--json").stdout == ""  # no job was made
    ran = run_cli("run", "--host", "sim", str(bundle), "--json")  # the bundle is not used up
    assert ran.returncode == 0, ran.stderr[-3000:]
