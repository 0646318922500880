"""A checkpoint-guarded job with --host pwsh-lab: the guard's cmdlets bound by real PowerShell."""

from __future__ import annotations

import json
from pathlib import Path

from pwshlab_support import PwshLab
from tests.builders import bundle_doc, write_bundle_source
from tests.clirun import Ran
from tests.clirun import vmbusops as run_cli

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import StepKind
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
from vmbusops.cli import exitcodes

STATUS = "C:\\ProgramData\\app\\status.txt"


def vmbusops(command: str, *args: str) -> Ran:
    return run_cli(command, "--host", "pwsh-lab", *args)


def test_a_guarded_change_that_fails_its_health_check_is_rolled_back(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("web*",), credentials=("lab-admin",), steps=frozenset(StepKind), checkpoints=True)
    save_trust_policy(TrustPolicy().with_key(TrustedKey(name="lab", public=key.public_key()), scope), trust_policy_path())
    steps = [
        {"name": "status-ok", "kind": "copy", "source": "files/ok.txt", "destination": STATUS},
        {"name": "status-broken", "kind": "copy", "source": "files/broken.txt", "destination": STATUS,
         "guard": "checkpoint"},
    ]  # fmt: skip
    guard = {"health": {"inline": f"exit ([int](Get-Content -LiteralPath '{STATUS}'))"}, "min_free_gb": 1}
    source = write_bundle_source(
        tmp_path / "bundle", bundle_doc(["web01"], steps, name="lab-guard", guard=guard),
        {"files/ok.txt": "0", "files/broken.txt": "1"},
    )  # fmt: skip
    bundle = tmp_path / "lab-guard.vmb"
    build_bundle(source, bundle)
    sign_bundle(bundle, key)

    run = vmbusops("run", str(bundle), "--json")
    assert run.returncode == exitcodes.ROLLED_BACK, (run.stdout[-3000:], run.stderr[-3000:])
    assert pwsh_lab.guest_file("web01", "ProgramData", "app", "status.txt").read_text(encoding="utf-8").strip() == "0"
    shown = run_cli("jobs", "show", "1", "--json")
    (r,) = json.loads(shown.stdout)["runs"]
    assert r["state"] == "rolled-back"
    assert [(c["name"], c["outcome"]) for c in r["checkpoints"]] == [("vmbusops-job1-run1-status-broken", "rolled-back")]
