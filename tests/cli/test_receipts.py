"""Signed execution receipts through the command line: what a tenant is handed, and what
``vmbusops receipt verify`` accepts and refuses (a flipped byte anywhere, another host's key, a
transcript changed or short of a record), exit code 4 for every refusal."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.builders import PASSWORD, VM, script, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey


@pytest.fixture
def ran(tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Two jobs run with `vmbusops run`: job 1 fails on web01 (exit 3) and legacy01 (off), job 2
    succeeds on web01. The host's public key exported as a tenant would get it."""
    key = PrivateKey.generate()
    trust_and_credential(key)
    monkeypatch.setenv("VMBUSOPS_LAB", str(write_lab(tmp_path, [VM("web01"), VM("legacy01", state="Off")])))
    steps = [script("hello", "'hello'"), script("fails", "'about to exit'\nexit 3")]
    failing = signed_bundle(tmp_path, key, vms=["web01", "legacy01"], steps=steps)
    assert vmbusops("run", str(failing)).returncode == 1
    ok = signed_bundle(tmp_path, key, vms=["web01"], steps=[script("hello", "'hello ünïcode ✓'")])
    assert vmbusops("run", str(ok)).returncode == 0
    published = vmbusops("receipt", "host-key")
    assert published.returncode == 0, published.stderr
    pub = tmp_path / "host.pub"
    pub.write_text(published.stdout)
    return {"key": key, "pub": pub, "home": vmbusops_home}


def export(tmp_path: Path, job: int, vm: str) -> tuple[Path, Path]:
    receipt = vmbusops("receipt", "export", str(job), "--vm", vm)
    assert receipt.returncode == 0, receipt.stderr
    transcript = vmbusops("receipt", "transcript", str(job), "--vm", vm)
    assert transcript.returncode == 0, transcript.stderr
    r, t = tmp_path / f"r-{job}-{vm}.json", tmp_path / f"t-{job}-{vm}.ndjson"
    r.write_text(receipt.stdout, encoding="utf-8")
    t.write_text(transcript.stdout, encoding="utf-8")
    return r, t


def verify(receipt: Path, pub: Path, transcript: Path | None = None) -> Any:
    return vmbusops("receipt", "verify", str(receipt), "--host-key", str(pub),
                    *(["--transcript", str(transcript)] if transcript else []))  # fmt: skip


def test_every_run_has_a_receipt_that_verifies_with_its_transcript(ran: dict[str, Any], tmp_path: Path) -> None:
    for job, vm, outcome in ((1, "web01", "failed"), (1, "legacy01", "failed"), (2, "web01", "success")):
        r, t = export(tmp_path, job, vm)
        got = verify(r, ran["pub"], t)
        assert got.returncode == 0, got.stderr
        assert got.stdout.startswith(f"receipt verified: job {job} on {vm} ({outcome}), signed by host key")
        assert got.stdout.rstrip().endswith("records)") and got.stdout.count("\n") == 1
        # The transcript is, byte for byte, what `logs --json` prints for the VM.
        logs = vmbusops("logs", str(job), "--vm", vm, "--json")
        assert logs.stdout == t.read_text(encoding="utf-8")
        assert verify(r, ran["pub"]).stdout.rstrip().endswith("transcript not checked")


def test_show_gives_what_the_run_did_and_the_bundle_it_ran(ran: dict[str, Any]) -> None:
    shown = vmbusops("receipt", "show", "1", "--json")
    assert shown.returncode == 0, shown.stderr
    receipts = {p["vm"]["name"]: p for p in map(json.loads, shown.stdout.splitlines())}
    assert set(receipts) == {"web01", "legacy01"}
    web = receipts["web01"]
    assert (web["outcome"], web["code"], web["job"], web["checkpoints"]) == ("failed", "ExitCode", 1, [])
    assert [(s["name"], s["kind"], s["result"], s["exit_code"]) for s in web["steps"]] == [
        ("hello", "script", "success", 0), ("fails", "script", "failed", 3),
    ]  # fmt: skip
    assert all(s["started_at"].endswith("+00:00") and s["finished_at"] for s in web["steps"])
    assert web["vm"]["id"] and web["transcript"]["records"] == 2
    assert receipts["legacy01"]["code"] == "VMNotRunning"
    assert [s["result"] for s in receipts["legacy01"]["steps"]] == ["failed", "skipped"]
    db = sqlite3.connect(ran["home"] / "journal" / "journal.sqlite")
    [(envelope,)] = db.execute("SELECT envelope FROM jobs WHERE id = 1").fetchall()
    db.close()
    assert web["bundle"]["digest"] == {"sha256": hashlib.sha256(envelope.encode()).hexdigest()}
    assert web["bundle"]["signers"] == [ran["key"].keyid]
    assert web["host"]["key_id"] == PrivateKey.from_pem(
        (ran["home"] / "host" / "receipt-signing.key").read_bytes(), passphrase=None, source="k"
    ).keyid
    table = vmbusops("receipt", "show", "1", "--vm", "WEB01")
    assert table.returncode == 0 and "failed (ExitCode)" in table.stdout and "legacy01" not in table.stdout


def test_receipts_and_transcripts_never_carry_the_credential(ran: dict[str, Any]) -> None:
    for args in (("show", "1", "--json"), ("show", "2"), ("export", "1", "--vm", "web01"),
                 ("transcript", "2", "--vm", "web01")):  # fmt: skip
        got = vmbusops("receipt", *args)
        assert got.returncode == 0 and PASSWORD not in got.stdout + got.stderr
    db = sqlite3.connect(ran["home"] / "journal" / "journal.sqlite")
    stored = [row[0] for row in db.execute("SELECT envelope FROM receipts")]
    db.close()
    assert len(stored) == 3
    for envelope in stored:
        assert PASSWORD not in base64.b64decode(json.loads(envelope)["payload"]).decode()


def _rewrite(path: Path, change: Any) -> Path:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    out = path.with_name("tampered-" + path.name)
    out.write_text(json.dumps(doc), encoding="utf-8")
    return out


def _flip(b64: str, at: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_verify_refuses_any_change_another_key_or_a_wrong_transcript(ran: dict[str, Any], tmp_path: Path) -> None:
    r, t = export(tmp_path, 1, "web01")
    payload = base64.b64decode(json.loads(r.read_text())["payload"])
    outcome_at = payload.index(b'"failed"') + 1  # "failed" -> "gailed"
    other = tmp_path / "other.pub"
    other.write_bytes(PrivateKey.generate().public_key().to_pem())
    lines = t.read_bytes().splitlines(keepends=True)
    changed, short = tmp_path / "changed.ndjson", tmp_path / "short.ndjson"
    changed.write_bytes(t.read_bytes().replace(b"about to exit", b"about to exiT"))
    short.write_bytes(b"".join(lines[1:]))
    raw = bytearray(r.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    flipped_file = tmp_path / "flipped.json"
    flipped_file.write_bytes(bytes(raw))
    cases = {
        "payload": (_rewrite(r, lambda d: d.update(payload=_flip(d["payload"], outcome_at))), ran["pub"], None,
                    "was altered after signing"),
        "signature": (_rewrite(r, lambda d: d["signatures"][0].update(sig=_flip(d["signatures"][0]["sig"], 5))),
                      ran["pub"], None, "was altered after signing"),
        "a byte of the file": (flipped_file, ran["pub"], None, ""),
        "another host key": (r, other, None, "is not signed by host key"),
        "a changed transcript": (r, ran["pub"], changed, "the transcript does not match"),
        "a missing record": (r, ran["pub"], short, "(1 records given, 2 signed)"),
    }  # fmt: skip
    for what, (receipt, pub, transcript, says) in cases.items():
        got = verify(receipt, pub, transcript)
        assert got.returncode == 4, (what, got.stdout, got.stderr)
        assert says in got.stderr and got.stdout == "", (what, got.stderr)
        assert got.stderr.count("\n") <= 2 and "Traceback" not in got.stderr, (what, got.stderr)


def test_a_receipt_lost_with_a_crash_is_written_when_asked_for(ran: dict[str, Any]) -> None:
    db = sqlite3.connect(ran["home"] / "journal" / "journal.sqlite")
    with db:
        db.execute("DELETE FROM receipts WHERE run_id = (SELECT id FROM runs WHERE job_id = 2)")
    db.close()
    shown = vmbusops("receipt", "show", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    [again] = map(json.loads, shown.stdout.splitlines())
    assert again["outcome"] == "success" and again["vm"] == {"name": "web01", "id": None}  # no host asked
    # Written once: asking again gives the same bytes.
    first = vmbusops("receipt", "export", "2", "--vm", "web01").stdout
    assert vmbusops("receipt", "export", "2", "--vm", "web01").stdout == first


def test_usage_errors_say_what_to_do(ran: dict[str, Any], tmp_path: Path) -> None:
    nothing = vmbusops("receipt", "export", "1", "--vm", "nosuch")
    assert nothing.returncode == 2 and "job 1 has no run on nosuch" in nothing.stderr
    missing = verify(tmp_path / "none.json", ran["pub"])
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    not_a_key = tmp_path / "x.pub"
    not_a_key.write_text("hello")
    r, _ = export(tmp_path, 2, "web01")
    assert verify(r, not_a_key).returncode == 2
