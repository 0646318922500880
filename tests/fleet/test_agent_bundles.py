"""A fleet agent's verified bundles (:class:`VerifiedBundles`): each digest fetched, verified and
extracted once, and every run judged again on what depends on it or on the moment."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.fleet.agent_bundles import Refusal, VerifiedBundles, verify_for_vm

SAY = {"kind": "script", "name": "say", "inline": 'Write-Output "hi"'}


def test_a_bundle_is_verified_once_per_digest_and_each_run_judged_again(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    trust_and_credential(key)
    data = signed_bundle(tmp_path, key, vms=["web01", "web02"], steps=[SAY]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    bundles = VerifiedBundles()
    assert bundles.take(digest, vm="web01") is None  # not verified yet: fetch and verify
    first = verify_for_vm(data, vm="web01", digest=digest)
    bundles.add(first)

    second = bundles.take(digest, vm="web02")
    assert second is not None and second.directory == first.directory and bundles.verified == 1
    assert second.envelope_json == first.envelope_json
    # What depends on the run or on the moment is judged for every run.
    with pytest.raises(Refusal, match="does not target VM 'web03'"):
        bundles.take(digest, vm="web03")
    later = datetime.now(UTC) + timedelta(days=8)
    with pytest.raises(Refusal, match="expired") as expired:
        bundles.take(digest, vm="web02", now=later)
    with pytest.raises(Refusal, match="expired") as in_full:
        verify_for_vm(data, vm="web02", digest=digest, now=later)
    assert expired.value.code == in_full.value.code  # refused as a full verification refuses it

    # The trust policy changed (the key is no longer trusted): verified in full again, and refused.
    bundles.release(first)
    bundles.release(second)
    trust_and_credential(PrivateKey.generate())
    assert bundles.take(digest, vm="web01") is None
    with pytest.raises(Refusal, match="no signature from a trusted key"):
        verify_for_vm(data, vm="web01", digest=digest)

    # Trusted again: a new verification, and the directory of the old one, unused, goes.
    trust_and_credential(key)
    again = verify_for_vm(data, vm="web01", digest=digest)
    bundles.add(again)
    assert bundles.verified == 2 and not first.directory.exists() and again.directory.exists()


def test_only_so_many_unused_bundles_are_kept_and_none_a_run_uses_goes(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    trust_and_credential(key)
    bundles = VerifiedBundles(keep=1)
    made = []
    for _ in range(3):
        data = signed_bundle(tmp_path, key, vms=["web01"], steps=[SAY]).read_bytes()
        bundle = verify_for_vm(data, vm="web01", digest=hashlib.sha256(data).hexdigest())
        bundles.add(bundle)
        made.append(bundle)
    # All three in use: all kept.
    assert all(b.directory.exists() for b in made)
    bundles.release(made[0])
    bundles.release(made[1])
    data = signed_bundle(tmp_path, key, vms=["web01"], steps=[SAY]).read_bytes()
    bundles.add(verify_for_vm(data, vm="web01", digest=hashlib.sha256(data).hexdigest()))
    # Two unused, one kept: the one released first went.
    assert [b.directory.exists() for b in made] == [False, True, True]
