"""--json on bundle inspect, bundle verify and copy, and keys list: one JSON object per line,
the same facts as the text, and the documented exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.paths import keys_dir


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_keys_list_shows_signing_keys_and_trusted_keys_with_their_ids(vmbusops_home: Path) -> None:
    assert vmbusops("keys", "new", "alice").returncode == 0
    assert vmbusops("keys", "new", "bob", "--passphrase", stdin="secret words\n").returncode == 0
    (keys_dir() / "bob.pub").unlink()  # an encrypted key without its .pub: its id needs the passphrase
    alice = vmbusops_home / "keys" / "alice.pub"
    assert vmbusops("trust", "add", str(alice), "--name", "alice-ops").returncode == 0
    listed = vmbusops("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = {k["name"]: k for k in lines(listed.stdout) if k["kind"] == "signing"}
    trusted = [k for k in lines(listed.stdout) if k["kind"] == "trusted"]
    assert mine["alice"]["keyid"] == trusted[0]["keyid"] and len(trusted[0]["keyid"]) == 64
    assert mine["alice"]["trusted_as"] == "alice-ops" and mine["alice"]["encrypted"] is False
    assert (mine["bob"]["keyid"], mine["bob"]["encrypted"], mine["bob"]["public"]) == (None, True, None)
    assert trusted[0]["name"] == "alice-ops" and trusted[0]["scopes"] == [1]
    text = vmbusops("keys", "list").stdout
    assert f"{mine['alice']['keyid']}  alice  (private+public; trusted here as alice-ops)" in text
    assert "bob  (private only, encrypted)" in text
    assert "secret" not in listed.stdout + text


def test_bundle_inspect_and_verify_json(vmbusops_home: Path, tmp_path: Path) -> None:
    key = PrivateKey.generate()
    trust_and_credential(key)
    steps = [{"kind": "script", "name": "hello", "inline": 'Write-Output "hi"'}]
    bundle = signed_bundle(tmp_path, key, vms=["web*"], steps=steps, name="json-demo")
    inspected = vmbusops("bundle", "inspect", str(bundle), "--json")
    assert inspected.returncode == 0, inspected.stderr
    (doc,) = lines(inspected.stdout)
    assert (doc["bundle"], doc["targets"]["vms"], doc["steps"][0]["name"]) == ("json-demo", ["web*"], "hello")
    (signature,) = doc["signatures"]
    assert (signature["keyid"], signature["valid"]) == (key.keyid, True) and signature["trusted_as"]
    verified = vmbusops("bundle", "verify", str(bundle), "--json")
    assert verified.returncode == 0, verified.stderr
    (ok,) = lines(verified.stdout)
    assert ok["ok"] is True and ok["id"] == doc["id"] and ok["signers"][0]["keyid"] == key.keyid
    stranger = signed_bundle(tmp_path, PrivateKey.generate(), vms=["web01"], steps=steps, name="json-stranger")
    refused = vmbusops("bundle", "verify", str(stranger), "--json")
    assert refused.returncode == 4
    (no,) = lines(refused.stdout)
    assert (no["ok"], no["reason"]) == (False, "UntrustedSigner")
    assert "no signature from a trusted key" in no["error"]


def test_copy_json_is_one_line_per_vm_and_exit_1_when_any_failed(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    make_lab()
    src = tmp_path / "f.txt"
    src.write_text("hello", encoding="utf-8")
    done = vmbusops("copy", "--vm", "web01", "--vm", "legacy01", "--json", str(src), "C:\\f.txt")  # legacy01 is off
    assert done.returncode == 1
    by_vm = {d["vm"]: d for d in lines(done.stdout)}
    assert by_vm["web01"] == {
        "vm": "web01", "ok": True, "source": str(src.resolve()), "dest": "C:\\f.txt", "bytes": 5,
        "enabled_guest_services": False, "code": None,
    }  # fmt: skip
    assert by_vm["legacy01"]["ok"] is False and "needs a running guest" in by_vm["legacy01"]["error"]
    assert by_vm["legacy01"]["code"] == "VMNotRunning"
