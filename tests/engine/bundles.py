"""Signed bundles for command-line tests, made through the real build and sign path."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.builders import CREDENTIAL, PASSWORD, bundle_doc, write_bundle_source

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import StepKind
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
from vmbusops.credentials import CredentialStore, Secret


def trust_and_credential(key: PrivateKey, vms: tuple[str, ...] = ("*",), *, checkpoints: bool = False) -> None:
    """Under the current VMBUSOPS_HOME: trust ``key`` for ``vms`` (globs; default every VM; with
    ``checkpoints``, for checkpoint guards too), and store the lab credential."""
    scope = Scope(
        keys=(), vms=vms, credentials=(CREDENTIAL,), steps=frozenset(StepKind), threshold=1, checkpoints=checkpoints
    )
    policy = TrustPolicy().with_key(TrustedKey(name="tests", public=key.public_key()), scope)
    save_trust_policy(policy, trust_policy_path())
    CredentialStore().set(CREDENTIAL, "Administrator", Secret(PASSWORD))


def signed_bundle(
    directory: Path,
    key: PrivateKey,
    *,
    vms: list[str],
    steps: list[dict[str, Any]],
    execution: dict[str, Any] | None = None,
    name: str = "engine-test",
    targets: dict[str, Any] | None = None,
    guard: dict[str, Any] | None = None,
) -> Path:
    """``targets`` (groups, tags, ...) replaces the ``targets`` table that ``vms`` would make;
    ``guard`` is the bundle's ``[guard]`` table."""
    extra: dict[str, Any] = {"targets": targets} if targets is not None else {}
    if guard is not None:
        extra["guard"] = guard
    source = write_bundle_source(
        directory / f"src-{uuid.uuid4().hex[:8]}",
        bundle_doc(vms, steps, name=name, execution=execution or None, **extra),
    )
    out = directory / f"{source.name}.vmb"
    build_bundle(source, out)
    sign_bundle(out, key)
    return out
