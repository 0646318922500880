"""Checkpoint guards in the manifest: spans, the one-line refusals of bad input, and the trust
scope's permission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.builders import bundle_doc, write_bundle_source
from tests.clirun import vmbusops

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.errors import TrustPolicyError
from vmbusops.bundle.guard import Span
from vmbusops.bundle.manifest import manifest_from_dict
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, parse_trust_policy
from vmbusops.cli.exitcodes import OK, USAGE

HEALTH = {"inline": "Get-Service W3SVC"}


def manifest(steps: list[dict[str, Any]], guard: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "g", "version": 1, "id": "0b8e2a4c-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        "issued": "2030-01-01T00:00:00Z", "expires": "2030-01-08T00:00:00Z",
        "targets": {"vms": ["web01"]}, "credential": "lab-admin", "steps": steps, "files": [],
    }  # fmt: skip
    if guard is not None:
        doc["guard"] = guard
    return doc


def step(name: str, guarded: bool = False) -> dict[str, Any]:
    return {"kind": "script", "name": name, "inline": "Get-Date", **({"guard": "checkpoint"} if guarded else {})}


def test_contiguous_guarded_steps_make_one_span_each() -> None:
    steps = [step("a"), step("b", True), step("c", True), step("d"), step("e", True)]
    m = manifest_from_dict(manifest(steps, {"health": HEALTH}))
    assert m.guarded_spans() == (Span(1, 2), Span(4, 4))
    whole = manifest_from_dict(manifest([step("a"), step("b")], {"health": HEALTH, "all_steps": True}))
    assert whole.guarded_spans() == (Span(0, 1),)
    assert manifest_from_dict(manifest([step("a")], None)).guarded_spans() == ()
    # what is signed: an unguarded manifest's JSON has no trace of guards
    assert b"guard" not in manifest_from_dict(manifest([step("a")], None)).to_json()


@pytest.mark.parametrize(
    ("steps", "guard", "says"),
    [
        ([step("a", True)], None, 'steps[0] (a) says guard = "checkpoint", but the manifest has no guard'),
        ([step("a")], {"health": HEALTH}, "bundle.toml: guard protects no step"),
        ([step("a", True)], {}, "bundle.toml: guard lacks the required field 'health'"),
        ([step("a", True)], {"health": {}}, "bundle.toml: guard.health needs exactly one of 'inline'"),
        ([step("a", True)], {"health": {"inline": "x", "dsc": True}}, "needs exactly one of"),
        ([step("a", True)], {"health": HEALTH, "checkpoint": "any"}, "bundle.toml: guard.checkpoint must be one of production, production-or-standard"),
        ([step("a", True)], {"health": HEALTH, "min_free_gb": -1}, "bundle.toml: guard.min_free_gb must be a number from 0 to 65536"),
        ([step("a", True)], {"health": HEALTH, "room": 1}, "bundle.toml: guard has unknown field(s) 'room'"),
        ([{**step("a"), "guard": "snapshot"}], {"health": HEALTH}, "steps[0].guard must be one of checkpoint"),
    ],
)
def test_bad_guards_are_refused_in_one_line(
    tmp_path: Path, vmbusops_home: Path, steps: list[dict[str, Any]], guard: dict[str, Any] | None, says: str
) -> None:
    extra = {"guard": guard} if guard is not None else {}
    source = write_bundle_source(tmp_path / "src", bundle_doc(["web01"], steps, **extra))
    ran = vmbusops("bundle", "build", str(source), "-o", str(tmp_path / "b.vmb"))
    assert ran.returncode == USAGE, ran
    assert says in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and ran.stderr.count("\n") <= 2


def test_a_guard_builds_with_durations_in_the_source(tmp_path: Path, vmbusops_home: Path) -> None:
    guard = {"checkpoint": "production-or-standard", "min_free_gb": 2, "health": {"dsc": True, "timeout": "2m"}}
    source = write_bundle_source(tmp_path / "src", bundle_doc(["web01"], [step("a", True)], guard=guard))
    ran = vmbusops("bundle", "build", str(source), "-o", str(tmp_path / "b.vmb"))
    assert ran.returncode == OK, ran
    ran = vmbusops("bundle", "inspect", str(tmp_path / "b.vmb"), "--json")
    assert ran.returncode == OK, ran
    assert '"timeout_seconds": 120' in ran.stdout and '"production-or-standard"' in ran.stdout


def test_the_trust_policy_keeps_the_checkpoints_permission() -> None:
    key = PrivateKey.generate()
    policy = TrustPolicy().with_key(TrustedKey(name="k", public=key.public_key()), Scope(keys=(), checkpoints=True))
    text = policy.to_toml()
    assert "checkpoints = true" in text
    assert parse_trust_policy(text).scopes[0].checkpoints
    assert not parse_trust_policy(text.replace("checkpoints = true\n", "")).scopes[0].checkpoints
    with pytest.raises(TrustPolicyError, match="checkpoints must be true or false"):
        parse_trust_policy(text.replace("checkpoints = true", 'checkpoints = "yes"'))
    assert not Scope(keys=("a",), checkpoints=True).same_rights(Scope(keys=("a",)))
