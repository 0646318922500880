"""The tenant co-signing pattern of docs/tenants.md, step by step through the command line: the
tenant's VMs run only what the provider and the tenant both signed, the provider's own VMs what
the provider signed, and the receipt names both signers."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from tests.builders import CREDENTIAL, PASSWORD, VM, bundle_doc, script, write_bundle_source, write_lab
from tests.clirun import vmbusops

from vmbusops.bundle.keys import load_public_key
from vmbusops.credentials import CredentialStore, Secret


def keyid(pub: Path) -> str:
    return load_public_key(pub).keyid


def bundle(tmp_path: Path, name: str, vms: list[str], *signers: str) -> Path:
    source = write_bundle_source(tmp_path / name, bundle_doc(vms, [script("hello", "'hello'")], name=name))
    out = tmp_path / f"{name}.vmb"
    assert vmbusops("bundle", "build", str(source), "-o", str(out)).returncode == 0
    for signer in signers:
        signed = vmbusops("bundle", "sign", str(out), "--key", signer)
        assert signed.returncode == 0, signed.stderr
    return out


def test_a_tenant_scope_needs_the_tenants_signature_as_well_as_the_providers(
    tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMBUSOPS_LAB", str(write_lab(tmp_path, [VM("web01"), VM("acme-web01")])))
    CredentialStore().set(CREDENTIAL, "Administrator", Secret(PASSWORD))
    keys = vmbusops_home / "keys"
    for name in ("provider", "acme"):
        assert vmbusops("keys", "new", name).returncode == 0
    provider, acme = keyid(keys / "provider.pub"), keyid(keys / "acme.pub")
    added = vmbusops("trust", "add", str(keys / "provider.pub"), "--vm", "web*", "--credential", CREDENTIAL)
    assert added.returncode == 0, added.stderr
    added = vmbusops("trust", "add", str(keys / "acme.pub"), "--vm", "acme-*", "--credential", CREDENTIAL,
                     "--threshold", "2")  # fmt: skip
    assert added.returncode == 0, added.stderr
    # By hand, as the guide says: the provider's key joins the tenant's scope.
    trust = vmbusops_home / "trust.toml"
    doc = tomllib.loads(trust.read_text(encoding="utf-8"))
    [tenant_scope] = [s for s in doc["scopes"] if s["vms"] == ["acme-*"]]
    assert tenant_scope["keys"] == [acme] and tenant_scope["threshold"] == 2
    tenant_scope["keys"].append(provider)
    trust.write_text(tomli_w.dumps(doc), encoding="utf-8")

    alone = vmbusops("run", str(bundle(tmp_path, "provider-alone", ["acme-web01"], "provider")))
    assert alone.returncode == 4, alone.stdout + alone.stderr
    assert "needs 2 signers" in alone.stderr
    tenant_alone = vmbusops("run", str(bundle(tmp_path, "tenant-alone", ["acme-web01"], "acme")))
    assert tenant_alone.returncode == 4 and "2 signers" in tenant_alone.stderr
    assert vmbusops("jobs", "--json").stdout == ""  # nothing ran

    both = vmbusops("run", "--json", str(bundle(tmp_path, "both", ["acme-web01"], "provider", "acme")))
    assert both.returncode == 0, both.stdout + both.stderr
    job = next(line["job"] for line in map(json.loads, both.stdout.splitlines()) if line["event"] == "job")
    own = vmbusops("run", str(bundle(tmp_path, "own", ["web01"], "provider")))
    assert own.returncode == 0, own.stderr  # the provider's own VMs need only the provider

    shown = vmbusops("receipt", "show", str(job), "--vm", "acme-web01", "--json")
    assert shown.returncode == 0, shown.stderr
    receipt = json.loads(shown.stdout)
    assert receipt["outcome"] == "success"
    assert sorted(receipt["bundle"]["signers"]) == sorted([provider, acme])
