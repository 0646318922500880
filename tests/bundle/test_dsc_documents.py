"""A dsc step whose MOF cannot be applied is refused before a job is made of it: by ``bundle
build`` (nothing is signed) and, for a bundle built elsewhere, at acceptance (``run``, the agent),
where it is released again, so it is not used up. It used to pass both, fail at run time after
the steps before it had run, and then be refused as a replay."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from bundlecraft import make_source, read_members, regular, rewrite, trusting

from vmbusops.bundle import errors as E
from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import save_trust_policy
from vmbusops.engine import acceptance
from vmbusops.engine.journal import Journal

BAD_MOF = b"instance of MSFT_RoleResource {\n  Ensure = \"Present\"\n"  # no closing brace


def test_build_refuses_a_mof_that_does_not_parse(tmp_path: Path, vmbusops_home: Path) -> None:
    source = make_source(tmp_path / "src")
    (source / "dsc" / "localhost.mof").write_bytes(BAD_MOF)
    with pytest.raises(E.BundleSourceError) as caught:
        build_bundle(source, tmp_path / "out.vmb")
    assert caught.value.message.startswith("bundle.toml: step configure: cannot read the MOF dsc/localhost.mof: ")
    assert caught.value.hint and "compile the configuration again" in caught.value.hint
    assert not (tmp_path / "out.vmb").exists()


def with_member(good: Path, bad: Path, name: str, data: bytes) -> Path:
    """``good`` with member ``name`` replaced by ``data``, the manifest's entry made to match and
    its signatures dropped (the caller signs it again): a bundle as another tool could build it."""

    def change(members: list[object]) -> list[object]:
        env = json.loads(members[0].data or b"")  # type: ignore[attr-defined]
        manifest = json.loads(base64.b64decode(env["payload"]))
        for entry in manifest["files"]:
            if entry["path"] == name:
                entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        env["payload"] = base64.b64encode(json.dumps(manifest).encode()).decode()
        env["signatures"] = []
        out = [regular("envelope.json", json.dumps(env).encode())]
        for m in members[1:]:
            out.append(regular(name, data) if m.info.name == name else m)  # type: ignore[attr-defined]
        return out

    return rewrite(good, bad, change)  # type: ignore[arg-type]


def test_acceptance_refuses_it_and_the_bundle_is_not_used_up(tmp_path: Path, vmbusops_home: Path) -> None:
    key = PrivateKey.generate()
    save_trust_policy(trusting(key), trust_policy_path())
    good = tmp_path / "good.vmb"
    build_bundle(make_source(tmp_path / "src"), good)
    assert any(m.info.name == "dsc/localhost.mof" for m in read_members(good))
    bad = with_member(good, tmp_path / "bad.vmb", "dsc/localhost.mof", BAD_MOF)
    sign_bundle(bad, key)
    journal = Journal()
    try:
        with acceptance.open_replay(journal) as replay:
            before = replay.count()
        with pytest.raises(E.DocumentsError) as caught:
            acceptance.accept(bad, journal)
        assert str(caught.value).startswith("bundle bad.vmb: step configure: cannot read the MOF dsc/localhost.mof")
        with acceptance.open_replay(journal) as replay:
            assert replay.count() == before  # released: nothing recorded, the bundle can be sent again
        assert journal.jobs(limit=1) == []
    finally:
        journal.close()
    assert not any((vmbusops_home / "bundles" / "accepted").glob("bundle-*"))  # its files are gone
