"""The happy paths: author -> sign -> trust -> verify -> accept, and the schema's strictness."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bundlecraft import make_bundle, make_source, trusting
from click.testing import CliRunner

from vmbusops.bundle import errors as E
from vmbusops.bundle.build import build_bundle, parse_duration
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import (
    CopyStep,
    DscMode,
    DscStep,
    ResumePolicy,
    ScriptStep,
    manifest_from_dict,
    manifest_to_dict,
    parse_manifest,
)
from vmbusops.bundle.policy import _glob_covers, parse_trust_policy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.scaffold import EXAMPLE_FILES
from vmbusops.bundle.verify import accept_bundle, verify_bundle
from vmbusops.cli.exitcodes import BUNDLE_REJECTED, OK, USAGE
from vmbusops.cli.main import cli

PASSPHRASE = "correct horse battery staple"


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_author_sign_trust_verify_with_the_cli(tmp_path: Path, vmbusops_home: Path) -> None:
    env = {"VMBUSOPS_KEY_PASSPHRASE": PASSPHRASE}
    src, out = tmp_path / "src", tmp_path / "demo.vmb"
    assert run("bundle", "init", str(src))[0] == OK
    code, stdout, _ = run("keys", "new", "alice", "--passphrase", env=env)
    assert code == OK, stdout
    key_file = vmbusops_home / "keys" / "alice.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert run("keys", "new", "bob")[0] == OK

    assert run("bundle", "build", str(src), "-o", str(out))[0] == OK
    code, _, stderr = run("bundle", "verify", str(out))
    assert code == USAGE
    assert "no trust policy" in stderr

    assert run("bundle", "sign", str(out), "--key", "alice", env=env)[0] == OK
    assert run("bundle", "sign", str(out), "--key", str(vmbusops_home / "keys" / "bob.key"))[0] == OK
    pub = str(vmbusops_home / "keys" / "alice.pub")
    code, stdout, _ = run("trust", "add", pub, "--vms", "web*", "--vms", "db0?", "--credential", "lab-admin")
    assert code == OK, stdout

    code, stdout, stderr = run("bundle", "verify", str(out))
    assert code == OK, stderr
    assert "demo.vmb: lab-demo v1, 3 steps on web01, web02, db01 as lab-admin" in stdout
    assert stdout.startswith("OK ")
    assert "signed by alice" in stdout

    code, stdout, _ = run("bundle", "inspect", str(out))
    assert code == OK
    assert "copy-motd [copy]: Copy-VMFile files/motd.txt" in stdout
    assert "configure [dsc]: DSC apply dsc/localhost.mof with modules dsc/modules/VmbusOpsDemo" in stdout
    assert "trusted key alice: signature valid" in stdout
    assert "unknown key" in stdout  # bob signed but is not trusted

    code, stdout, _ = run("trust", "list")
    assert "vms web*, db0?" in stdout
    assert "credentials lab-admin" in stdout
    keyid = PrivateKey.from_pem(key_file.read_bytes(), passphrase=PASSPHRASE.encode(), source="t").keyid
    assert run("trust", "remove", keyid[:12])[0] == OK
    code, _, stderr = run("bundle", "verify", str(out))
    assert code == BUNDLE_REJECTED
    assert "no signature from a trusted key" in stderr

    with ReplayStore(vmbusops_home / "bundles" / "accepted.sqlite") as replay:
        assert replay.count() == 0, "verify must record nothing"


def test_passphrases_stay_secret(tmp_path: Path) -> None:
    code, out, err = run("keys", "new", "carol", "--passphrase", "-o", str(tmp_path), stdin=PASSPHRASE + "\n")
    assert code == OK
    assert PASSPHRASE not in out + err
    make_source(tmp_path / "src")
    build_bundle(tmp_path / "src", tmp_path / "b.vmb")
    key = str(tmp_path / "carol.key")
    wrong = "not-the-passphrase"
    code, out, err = run(
        "bundle", "sign", str(tmp_path / "b.vmb"), "--key", key, env={"VMBUSOPS_KEY_PASSPHRASE": wrong}
    )
    assert code == USAGE
    assert "wrong passphrase" in err
    assert wrong not in out + err
    assert PASSPHRASE not in out + err
    assert "PRIVATE" not in out + err
    assert run("bundle", "sign", str(tmp_path / "b.vmb"), "--key", key, stdin=PASSPHRASE + "\n")[0] == OK
    assert "keyid=" in repr(PrivateKey.generate())
    assert "PRIVATE" not in repr(PrivateKey.generate())


def test_accept_extracts_privately_and_records(
    tmp_path: Path, alice: PrivateKey, replay: ReplayStore
) -> None:
    path, manifest = make_bundle(tmp_path, "ok", [alice])
    accepted = accept_bundle(path, policy=trusting(alice), replay=replay, workdir=tmp_path / "work")
    assert stat.S_IMODE(accepted.directory.stat().st_mode) == 0o700
    for rel, text in EXAMPLE_FILES.items():
        if rel == "bundle.toml":
            continue
        local = accepted.local_path(rel)
        assert local.read_bytes() == text.encode()
        assert stat.S_IMODE(local.stat().st_mode) == 0o600
    assert replay.was_accepted(manifest.id)
    assert replay.last_version("lab-demo") == 1
    steps = accepted.manifest.steps
    assert isinstance(steps[0], CopyStep)
    assert steps[0].destination == r"C:\ProgramData\vmbusops\motd.txt"
    assert isinstance(steps[1], ScriptStep)
    assert steps[1].retry.attempts == 3
    assert steps[1].timeout_seconds == 300
    assert isinstance(steps[2], DscStep)
    assert steps[2].mode is DscMode.APPLY
    assert accepted.local_path(steps[2].modules[0]).is_dir()
    assert accepted.manifest.execution.max_concurrency.of(3) == 1
    assert accepted.manifest.execution.resume is ResumePolicy.RESUME


def test_threshold_met_by_two_signers(
    tmp_path: Path, alice: PrivateKey, bob: PrivateKey, replay: ReplayStore
) -> None:
    policy = trusting(alice, bob, threshold=2)
    assert len(policy.scopes) == 1
    assert len(policy.scopes[0].keys) == 2
    path, _ = make_bundle(tmp_path, "two", [alice, bob])
    verified = verify_bundle(path, policy=policy, replay=replay)
    assert {k.keyid for k in verified.signers} == {alice.keyid, bob.keyid}


def test_trust_policy_round_trips_and_is_strict(alice: PrivateKey) -> None:
    policy = trusting(alice, until=datetime(2030, 1, 1, tzinfo=UTC))
    assert parse_trust_policy(policy.to_toml()) == policy
    with pytest.raises(E.TrustPolicyError, match="unknown field"):
        parse_trust_policy(policy.to_toml() + f"\n[[scopes]]\nkeys = ['{alice.keyid}']\nvmz = ['*']\n")
    with pytest.raises(E.TrustPolicyError, match="unknown step kind"):
        parse_trust_policy(policy.to_toml().replace('"copy"', '"format-disk"'))


@pytest.mark.parametrize(
    ("scope", "target", "covered"),
    [
        ("web*", "web01", True),
        ("web*", "WEB01", True),
        ("web*", "db01", False),
        ("web*", "web*", True),
        ("web*", "web0?", True),
        ("web?", "web*", False),
        ("web*", "w*", False),
        ("*", "anything*", True),
        ("db01", "db0?", False),
        ("web[0-9]*", "web1*", False),
    ],
)
def test_target_globs_are_covered_soundly(scope: str, target: str, covered: bool) -> None:
    assert _glob_covers(scope, target) is covered


def _doc(tmp_path: Path, alice: PrivateKey) -> dict[str, object]:
    _, manifest = make_bundle(tmp_path, "doc", [alice])
    return manifest_to_dict(manifest)


def test_manifest_round_trips(tmp_path: Path, alice: PrivateKey) -> None:
    doc = _doc(tmp_path, alice)
    manifest = manifest_from_dict(doc)
    assert parse_manifest(manifest.to_json()) == manifest


def test_manifest_rejects_unknown_fields_and_kinds(tmp_path: Path, alice: PrivateKey) -> None:
    doc = _doc(tmp_path, alice)
    with pytest.raises(E.UnknownFieldError, match="'colour'"):
        manifest_from_dict({**doc, "colour": "red"})
    steps = json.loads(json.dumps(doc["steps"]))
    steps[0]["overwite"] = True
    with pytest.raises(E.UnknownFieldError, match=r"steps\[0\] has unknown field\(s\) 'overwite'"):
        manifest_from_dict({**doc, "steps": steps})
    steps = json.loads(json.dumps(doc["steps"]))
    steps[1]["kind"] = "format-disk"
    with pytest.raises(E.UnknownStepKindError, match="unknown kind 'format-disk'"):
        manifest_from_dict({**doc, "steps": steps})
    with pytest.raises(E.ManifestError, match="not among the manifest's files"):
        manifest_from_dict({**doc, "files": []})
    with pytest.raises(E.ManifestError, match="not strict JSON"):
        parse_manifest(b'{"name": "a", "name": "b"}')


def test_build_reports_source_mistakes_as_usage_errors(tmp_path: Path) -> None:
    make_source(
        tmp_path / "a", schedule={"cron": "0 2 * * 6", "window": "4h", "cutoff": "30m", "jitter": "5m"}
    )
    manifest = build_bundle(tmp_path / "a", tmp_path / "a.vmb")
    assert manifest.schedule is not None
    assert manifest.schedule.window_seconds == 4 * 3600
    make_source(tmp_path / "b", schedule={"cron": "0 25 * * *", "window": "1h"})
    code, _, err = run("bundle", "build", str(tmp_path / "b"), "-o", str(tmp_path / "b.vmb"))
    assert code == USAGE
    assert "25 is outside 0-23" in err
    make_source(tmp_path / "c", steps=[{"kind": "teleport"}])
    code, _, err = run("bundle", "build", str(tmp_path / "c"), "-o", str(tmp_path / "c.vmb"))
    assert code == USAGE
    assert "unknown kind 'teleport'" in err
    assert not (tmp_path / "c.vmb").exists()
    assert parse_duration("1h30m", "t") == 5400
    assert parse_duration(90, "t") == 90


def test_keys_are_never_overwritten(tmp_path: Path) -> None:
    assert run("keys", "new", "dave", "-o", str(tmp_path))[0] == OK
    before = (tmp_path / "dave.key").read_bytes()
    code, _, err = run("keys", "new", "dave", "-o", str(tmp_path))
    assert code == USAGE
    assert "already exists" in err
    assert (tmp_path / "dave.key").read_bytes() == before


def test_accept_now_is_injected(tmp_path: Path, alice: PrivateKey, replay: ReplayStore) -> None:
    issued = datetime(2030, 6, 1, tzinfo=UTC)
    path, _ = make_bundle(tmp_path, "later", [alice], now=issued)
    with pytest.raises(E.NotYetValidError):
        verify_bundle(path, policy=trusting(alice), replay=replay)
    verify_bundle(path, policy=trusting(alice), replay=replay, now=issued + timedelta(days=1))
