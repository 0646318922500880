"""Checkpoint-guarded steps end to end: ``vmbusops run`` and ``jobs resume`` on the simulated host.

A guarded patch (a Windows update with a reboot) and a guarded deployment run under one checkpoint;
the health check reads the status the deployment leaves. Whether the change stays or is rolled
back is judged by the guest's whole state (files, services, hotfixes, DSC: ``tests.guest_state``)
before and after, by the host's list of checkpoints, by the run's state and code, and by the
receipt. The crash tests SIGKILL a real ``vmbusops run`` once the journal shows each phase of the
guard, then run ``jobs resume``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.builders import CREDENTIAL, VM, script, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential
from tests.guest_state import assert_same_guest, guest_state_at
from tests.simhost import open_sim_host

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.cli import exitcodes

STATUS = "C:\\App\\status.txt"
HEALTH = {"inline": f"exit (Get-Content -Path '{STATUS}')", "timeout": "30s"}
PATCH = {"kind": "patch", "name": "patch", "guard": "checkpoint", "allow_reboot": True}


def deploy(status: int, pause: float = 0) -> dict[str, Any]:
    """The guarded deployment: a new file, and the status the health check exits with."""
    text = f"Set-Content -Path 'C:\\App\\release.txt' -Value 'v2'\nSet-Content -Path '{STATUS}' -Value {status}"
    if pause:
        text += f"\nStart-Sleep -Seconds {pause}"
    return script("deploy", text, guard="checkpoint")


def web01(**more: Any) -> VM:
    return VM(
        "web01",
        more={
            "services": [{"name": "W3SVC", "display_name": "World Wide Web Publishing Service", "status": "Running"}],
            "hotfixes": [{"id": "KB5034439", "description": "Security Update", "installed_on": "2024-01-09"}],
            "updates": [{"kb": "KB5035845", "title": "2024-03 Cumulative Update", "categories": ["Security Updates"],
                         "restart": True}],
            "files": {STATUS: "0"},
            **more,
        },
    )  # fmt: skip


class Scene:
    def __init__(self, tmp_path: Path, home: Path, vm: VM, *, checkpoints: bool = True) -> None:
        self.tmp = tmp_path
        self.home = home
        self.key = PrivateKey.generate()
        trust_and_credential(self.key, checkpoints=checkpoints)
        self.lab = write_lab(tmp_path, [vm], boot_seconds=0.3)
        self.env = {"VMBUSOPS_LAB": str(self.lab), "NO_COLOR": "1"}
        self.db = home / "journal" / "journal.sqlite"

    def bundle(self, steps: list[dict[str, Any]], **guard: Any) -> Path:
        return signed_bundle(self.tmp, self.key, vms=["web01"], steps=steps, guard={"health": HEALTH, **guard})

    def visit(self) -> None:
        """The agent has been in the guest before (its scratch folder is there), as on any host
        it manages; then the guest's state is compared."""
        ran = vmbusops("exec", "--vm", "web01", "--", "hostname", env=self.env)
        assert ran.returncode == 0, ran

    def guest(self) -> dict[str, Any]:
        return guest_state_at(self.home / "sim", self.lab, "web01")

    def checkpoints_on_host(self) -> list[str]:
        async def main() -> list[str]:
            async with open_sim_host(self.lab, state_dir=self.home / "sim") as host:
                return [c.name for c in await host.get_checkpoints("web01")]

        return trio.run(main)

    def jobs(self, *args: str) -> dict[str, Any]:
        ran = vmbusops("jobs", "show", *args, "--json", env=self.env)
        assert ran.returncode == 0, ran
        result: dict[str, Any] = json.loads(ran.stdout)
        return result

    def receipt(self, job_id: int) -> dict[str, Any]:
        ran = vmbusops("receipt", "show", str(job_id), "--vm", "web01", "--json", env=self.env)
        assert ran.returncode == 0, ran
        payload: dict[str, Any] = json.loads(ran.stdout)  # the signed payload, verified
        return payload


def job_ids(db: Path) -> list[int]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT id FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def rows(db: Path) -> list[tuple[str, str | None]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in con.execute("SELECT phase, outcome FROM checkpoints ORDER BY span")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def run_state(db: Path, job_id: int) -> tuple[str, str | None, str | None]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        state, code, error = con.execute("SELECT state, code, error FROM runs WHERE job_id = ?", (job_id,)).fetchone()
        return state, code, error
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------- runs


def test_a_failed_health_check_puts_the_guest_back_exactly(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    bundle = scene.bundle([PATCH, deploy(status=1)])
    scene.visit()
    before = scene.guest()

    ran = vmbusops("run", str(bundle), env=scene.env)

    assert ran.returncode == exitcodes.ROLLED_BACK, ran
    assert_same_guest(before, scene.guest())
    assert scene.checkpoints_on_host() == []
    state, code, error = run_state(scene.db, 1)
    assert (state, code) == ("rolled-back", "RolledBack")
    assert error is not None and "vmbusops-job1-run1-patch" in error and "health check failed" in error
    receipt = scene.receipt(1)
    assert receipt["outcome"] == "rolled-back"
    (checkpoint,) = receipt["checkpoints"]
    assert checkpoint["name"] == "vmbusops-job1-run1-patch" and checkpoint["outcome"] == "rolled-back"
    assert checkpoint["taken_at"] and checkpoint["restored_at"] and checkpoint["removed_at"]


def test_a_healthy_change_stays_and_its_checkpoint_goes(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    before_steps = [script("before", "hostname")]
    ran = vmbusops("run", str(scene.bundle([*before_steps, PATCH, deploy(status=0)])), env=scene.env)

    assert ran.returncode == exitcodes.OK, ran
    assert scene.checkpoints_on_host() == []
    after = scene.guest()
    assert "KB5035845" in json.dumps(after["updates_installed"] or after["json"])
    assert any(path.casefold().endswith("app/release.txt") for path in after["files"])
    (checkpoint,) = scene.receipt(1)["checkpoints"]
    assert checkpoint["outcome"] == "kept" and checkpoint["restored_at"] is None and checkpoint["removed_at"]


def test_a_failing_guarded_step_rolls_back_and_skips_the_rest(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    scene.visit()
    before = scene.guest()
    failing = script("break", "Set-Content -Path 'C:\\App\\x.txt' -Value 1\nexit 7", guard="checkpoint")
    ran = vmbusops("run", str(scene.bundle([deploy(status=0), failing, script("after", "hostname")])), env=scene.env)

    assert ran.returncode == exitcodes.ROLLED_BACK, ran
    assert_same_guest(before, scene.guest())
    assert scene.checkpoints_on_host() == []
    steps = {s["name"]: s["state"] for s in scene.jobs("1")["runs"][0]["steps"]}
    assert steps == {"deploy": "success", "break": "failed", "after": "skipped"}


# ------------------------------------------------------------------------------------ trust, policy


def test_a_key_without_the_checkpoints_permission_is_refused_before_anything_runs(
    tmp_path: Path, vmbusops_home: Path
) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01(), checkpoints=False)
    ran = vmbusops("run", str(scene.bundle([deploy(status=0)])), env=scene.env)
    assert ran.returncode == exitcodes.BUNDLE_REJECTED, ran
    assert "guards steps with checkpoints" in ran.stderr
    assert "Traceback" not in ran.stderr and ran.stderr.count("\n") <= 2
    assert job_ids(scene.db) == []
    # The hint, followed as written (the key's other scope option: its one credential), works.
    hint = ran.stderr.split("allow it: ", 1)[1].split(" with the key's other", 1)[0]
    assert hint == "vmbusops trust remove tests, then vmbusops trust add PUBKEY --name tests --checkpoints"
    pubkey = tmp_path / "tests.pub"
    pubkey.write_bytes(scene.key.public_key().to_pem())
    assert vmbusops("trust", "remove", "tests", env=scene.env).returncode == 0
    added = vmbusops("trust", "add", str(pubkey), "--name", "tests", "--checkpoints", "--credential", CREDENTIAL, env=scene.env)
    assert added.returncode == 0, added
    assert vmbusops("run", str(scene.bundle([deploy(status=0)])), env=scene.env).returncode == exitcodes.OK


@pytest.mark.parametrize(
    ("vm", "guard", "says", "to_do", "taken"),
    [
        (web01(checkpoint_type="Disabled"), {}, "checkpoints are disabled on web01", "Set-VM -CheckpointType", []),
        (web01(checkpoint_type="Standard"), {}, "takes standard checkpoints only", '"production-or-standard"', []),
        (web01(vss=False), {}, "took a standard checkpoint", '"production-or-standard"', ["standard"]),
        (web01(), {"min_free_gb": 60000}, "not enough room for a checkpoint of web01", "min_free_gb", []),
    ],
)
def test_policy_refusals_leave_the_guest_and_the_host_untouched(
    tmp_path: Path, vmbusops_home: Path, vm: VM, guard: dict[str, Any], says: str, to_do: str, taken: list[str]
) -> None:
    scene = Scene(tmp_path, vmbusops_home, vm)
    scene.visit()
    before = scene.guest()
    ran = vmbusops("run", str(scene.bundle([PATCH, deploy(status=0)], **guard)), env=scene.env)
    assert ran.returncode == exitcodes.GUEST_ERRORS, ran
    state, code, error = run_state(scene.db, 1)
    assert (state, code) == ("failed", "CheckpointRefused") and error is not None and says in error, error
    assert to_do in error, error  # and what to do about it
    assert_same_guest(before, scene.guest())
    assert scene.checkpoints_on_host() == []
    # The receipt says which checkpoint Hyper-V took before it was refused (none, mostly).
    assert [c["type"] for c in scene.receipt(1)["checkpoints"] if c["type"]] == taken


def test_a_standard_checkpoint_is_taken_where_the_policy_accepts_one(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01(vss=False))
    scene.visit()
    before = scene.guest()
    ran = vmbusops("run", str(scene.bundle([deploy(status=1)], checkpoint="production-or-standard")), env=scene.env)
    assert ran.returncode == exitcodes.ROLLED_BACK, ran
    assert_same_guest(before, scene.guest())
    (checkpoint,) = scene.receipt(1)["checkpoints"]
    assert checkpoint["type"] == "standard" and checkpoint["outcome"] == "rolled-back"


# ------------------------------------------------------------------------------- crashes and cancel


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmbusops", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.stderr is not None
    proc.stderr.close()


def wait_for(db: Path, want: tuple[str, str | None], proc: subprocess.Popen[bytes]) -> bool:
    """Poll the journal until the guard's row says ``want``; False if the run ended first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if want in rows(db):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    raise AssertionError(f"the guard never reached {want}: {rows(db)}")


#: Where a kill lands: the phase the journal shows (with its outcome), and whether the change fails.
KILL_POINTS = [
    (("planned", None), True),
    (("taken", None), True),
    (("restoring", None), True),
    (("restored", None), True),
    (("removing", "rolled-back"), True),
    (("removed", "rolled-back"), True),
    (("taken", None), False),
    (("removing", "kept"), False),
]


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "fails"), KILL_POINTS, ids=[f"{p[0]}-{p[1]}-{'fail' if f else 'ok'}" for p, f in KILL_POINTS])
def test_sigkill_at_each_point_of_the_guard_then_resume(
    tmp_path: Path, vmbusops_home: Path, phase: tuple[str, str | None], fails: bool
) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    env = {**os.environ, **scene.env, "VMBUSOPS_HOME": str(vmbusops_home)}
    bundle = scene.bundle([PATCH, deploy(status=1 if fails else 0, pause=1), script("after", "hostname")])
    scene.visit()
    before = scene.guest()

    proc = start(["run", str(bundle)], env)
    landed = wait_for(scene.db, phase, proc)
    if landed:
        kill(proc)
    else:
        proc.communicate(timeout=60)
    seen = rows(scene.db)

    if landed and run_state(scene.db, 1)[0] in ("in-progress", "interrupted"):
        # (a kill that came after the run's end was committed leaves nothing to resume)
        resumed = start(["jobs", "resume", "1"], env)
        _, stderr = resumed.communicate(timeout=120)
        want = exitcodes.ROLLED_BACK if (fails or phase[0] == "taken") else exitcodes.OK
        assert resumed.returncode == want, (seen, stderr.decode())
    assert scene.checkpoints_on_host() == [], seen
    state, code, _ = run_state(scene.db, 1)
    if fails or phase == ("taken", None):
        assert (state, code) == ("rolled-back", "RolledBack"), seen
        assert_same_guest(before, scene.guest())
        steps = scene.jobs("1")["runs"][0]["steps"]
        # A step that began is never shown as skipped: one cut short by the kill ends failed.
        assert all(s["state"] in ("success", "failed") for s in steps if s["attempts"]), (seen, steps)
    else:
        assert state == "success", seen
    assert all(p == "removed" for p, _ in rows(scene.db)), rows(scene.db)
    assert landed or phase[0] in ("planned", "restoring", "removing", "removed"), f"never landed at {phase}"


@pytest.mark.slow
def test_cancel_mid_span_restores_before_the_run_ends(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    env = {**os.environ, **scene.env, "VMBUSOPS_HOME": str(vmbusops_home)}
    scene.visit()
    before = scene.guest()
    proc = start(["run", str(scene.bundle([PATCH, deploy(status=0, pause=5)]))], env)
    assert wait_for(scene.db, ("taken", None), proc)
    assert vmbusops("jobs", "cancel", "1", env=scene.env).returncode == 0
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.ROLLED_BACK, stderr.decode()
    state, code, error = run_state(scene.db, 1)
    assert (state, code) == ("rolled-back", "RolledBack") and error is not None and "cancelled" in error
    assert_same_guest(before, scene.guest())
    assert scene.checkpoints_on_host() == []


def test_the_run_timing_out_mid_span_rolls_back(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    scene.visit()
    before = scene.guest()
    bundle = signed_bundle(
        tmp_path, scene.key, vms=["web01"], steps=[deploy(status=0, pause=30)], guard={"health": HEALTH},
        execution={"target_timeout": "3s"},
    )  # fmt: skip
    ran = vmbusops("run", str(bundle), env=scene.env)
    assert ran.returncode == exitcodes.ROLLED_BACK, ran
    state, code, error = run_state(scene.db, 1)
    assert (state, code) == ("rolled-back", "RolledBack") and error is not None and "execution timeout" in error
    assert scene.jobs("1")["runs"][0]["steps"][0]["state"] == "execution-timed-out"
    assert_same_guest(before, scene.guest())
    assert scene.checkpoints_on_host() == []


def test_a_dsc_health_check_judges_by_test_dscconfiguration(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    scene.visit()
    before = scene.guest()
    bundle = signed_bundle(tmp_path, scene.key, vms=["web01"], steps=[deploy(status=0)], guard={"health": {"dsc": True}})
    ran = vmbusops("run", str(bundle), env=scene.env)
    # A guest with no DSC configuration cannot be confirmed healthy by one: the change is put back.
    assert ran.returncode == exitcodes.ROLLED_BACK, ran
    _, _, error = run_state(scene.db, 1)
    assert error is not None and "Test-DscConfiguration" in error and "Current configuration does not exist" in error
    assert_same_guest(before, scene.guest())
    assert scene.checkpoints_on_host() == []


async def test_a_dsc_health_check_keeps_a_change_that_leaves_the_configuration_converged(tmp_path: Path) -> None:
    from tests.builders import manifest, write_files
    from tests.dsc.test_dsc_step import FEATURE_MOF, run_job

    from vmbusops.engine import JobSource, State

    lab = write_lab(tmp_path, [web01(features=[{"name": "Web-Server", "restart": False}])], boot_seconds=0.2)
    root = tmp_path / "bundle"
    steps = [{"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"]}, deploy(status=1)]
    job = manifest(["web01"], steps, files=write_files(root, {"dsc/localhost.mof": FEATURE_MOF}), guard={"health": {"dsc": True}})
    result, _, journal = await run_job(lab, JobSource(manifest=job, directory=root, source="test"), tmp_path)
    assert result.state is State.SUCCESS, result.errors
    (run_id,) = journal.run_ids(result.job_id).values()
    (row,) = journal.checkpoints(run_id)
    assert (row.phase, row.outcome, row.restored_at) == ("removed", "kept", None)


def test_jobs_show_says_the_run_rolled_back_and_names_its_checkpoint(tmp_path: Path, vmbusops_home: Path) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    assert vmbusops("run", str(scene.bundle([deploy(status=1)])), env=scene.env).returncode == exitcodes.ROLLED_BACK
    (run,) = scene.jobs("1")["runs"]
    assert run["state"] == "rolled-back" and run["code"] == "RolledBack"
    assert [(c["name"], c["outcome"], c["type"]) for c in run["checkpoints"]] == [
        ("vmbusops-job1-run1-deploy", "rolled-back", "production")
    ]
    shown = vmbusops("jobs", "show", "1", env=scene.env)
    assert "rolled-back" in shown.stdout and "checkpoint vmbusops-job1-run1-deploy  production  rolled-back" in shown.stdout
