"""A guarded step whose session breaks: the run fails in one line, naming the checkpoint it keeps.

The simulator's ``malformed_on`` answers the guest invoker with a well-framed message that is not
XML, so the client breaks the session; the rollback, on that same broken session, cannot restore,
so the checkpoint is kept for the operator (docs/adr/0008-checkpoint-guards.md).
"""

from __future__ import annotations

from pathlib import Path

from tests.builders import lab_text
from tests.clirun import vmbusops
from tests.engine.test_guard import Scene, deploy, rows, run_state, web01

from vmbusops.cli import exitcodes


def test_a_session_broken_by_an_undecodable_message_mid_span_keeps_the_checkpoint(
    tmp_path: Path, vmbusops_home: Path
) -> None:
    scene = Scene(tmp_path, vmbusops_home, web01())
    bundle = scene.bundle([deploy(status=0)])
    # The lab, now answering the guest invoker with a message that is not XML.
    scene.lab.write_text(lab_text([web01()], boot_seconds=0.3, malformed_on="Invoke-VmbusOpsGuest"), encoding="utf-8")

    ran = vmbusops("run", str(bundle), env=scene.env)

    assert ran.returncode == exitcodes.GUEST_ERRORS, ran
    assert "Traceback" not in ran.stdout + ran.stderr
    state, code, error = run_state(scene.db, 1)
    assert (state, code) == ("failed", "CheckpointFailed")
    assert error is not None and "cannot read" in error and "the checkpoint is kept" in error
    assert scene.checkpoints_on_host() == ["vmbusops-job1-run1-deploy"]
    assert rows(scene.db) == [("restoring", "failed")]

    shown = scene.jobs("1")["runs"][0]["checkpoints"]
    assert [(c["name"], c["phase"], c["outcome"]) for c in shown] == [("vmbusops-job1-run1-deploy", "restoring", "failed")]
