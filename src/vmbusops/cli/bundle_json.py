"""What ``bundle inspect --json``, ``bundle verify --json`` and ``keys list`` say, as values.

The JSON shapes are built here from the bundle layer's own types, one function per shape, so the
human-readable and machine-readable forms of a command read the same facts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.errors import BundleError
from vmbusops.bundle.keys import load_public_key, read_private_key_file
from vmbusops.bundle.manifest import Manifest, format_time
from vmbusops.bundle.policy import TrustPolicy
from vmbusops.errors import VmbusOpsError


def manifest_json(m: Manifest) -> dict[str, Any]:
    e = m.execution
    return {
        "bundle": m.name,
        "version": m.version,
        "id": m.id,
        "issued": format_time(m.issued),
        "expires": format_time(m.expires),
        "targets": {"vms": list(m.targets.vms), "groups": list(m.targets.groups), "tags": list(m.targets.tags)},
        "credential": m.credential,
        "execution": {
            "max_concurrency": e.max_concurrency.to_json(),
            "max_errors": e.max_errors.to_json(),
            "target_timeout_seconds": e.target_timeout_seconds,
            "delivery_timeout_seconds": e.delivery_timeout_seconds,
            "resume": e.resume.value,
        },
        "schedule": None if m.schedule is None else {
            "cron": m.schedule.cron,
            "timezone": m.schedule.timezone,
            "window_seconds": m.schedule.window_seconds,
            "cutoff_seconds": m.schedule.cutoff_seconds,
            "jitter_seconds": m.schedule.jitter_seconds,
            "missed": m.schedule.missed.value,
        },
        "steps": [
            {
                "name": s.name, "kind": s.kind.value, "describe": s.describe(), "timeout_seconds": s.timeout_seconds,
                "attempts": s.retry.attempts, "backoff_seconds": s.retry.backoff_seconds, "idempotent": s.idempotent,
                "guard": s.guard.value if s.guard is not None else None,
            }
            for s in m.steps
        ],
        "guard": None if m.guard is None else m.guard.to_dict(),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in m.files],
        "bytes": m.total_size,
    }  # fmt: skip


def rejected_json(file: Path, exc: BundleError) -> dict[str, Any]:
    """``bundle verify --json`` of a bundle that failed a check (exit code 4)."""
    return {
        "ok": False,
        "file": str(file),
        "reason": type(exc).__name__.removesuffix("Error"),
        "error": exc.message,
        "hint": exc.hint,
    }


def signing_keys(directory: Path, policy: TrustPolicy) -> list[dict[str, Any]]:
    """The key pairs under ``directory`` (``NAME.key`` and/or ``NAME.pub``), each with its key id
    (the SHA-256 of the public key, as the trust policy names keys) where it can be read without
    a passphrase, and the name it is trusted under on this host, if any."""
    names = sorted({p.stem for p in directory.glob("*.key")} | {p.stem for p in directory.glob("*.pub")}) if directory.is_dir() else []
    out: list[dict[str, Any]] = []
    for name in names:
        private, public = directory / f"{name}.key", directory / f"{name}.pub"
        keyid: str | None = None
        problem: str | None = None
        encrypted = False
        try:
            if public.exists():
                keyid = load_public_key(public).keyid
            if private.exists():
                data = read_private_key_file(private)
                encrypted = PrivateKey.is_encrypted_pem(data)
                if keyid is None and not encrypted:
                    keyid = PrivateKey.from_pem(data, passphrase=None, source=str(private)).keyid
        except VmbusOpsError as exc:
            problem = exc.message
        trusted = policy.keys.get(keyid) if keyid else None
        out.append(
            {
                "kind": "signing", "name": name, "keyid": keyid,
                "private": str(private) if private.exists() else None, "encrypted": encrypted,
                "public": str(public) if public.exists() else None,
                "trusted_as": trusted.name if trusted else None, "problem": problem,
            }
        )  # fmt: skip
    return out


def trusted_keys(policy: TrustPolicy) -> list[dict[str, Any]]:
    """The keys the trust policy trusts, with the scopes (numbered as ``trust list`` numbers them)."""
    return [
        {
            "kind": "trusted",
            "name": k.name,
            "keyid": k.keyid,
            "scopes": [i for i, s in enumerate(policy.scopes, 1) if k.keyid in s.keys],
        }
        for k in policy.keys.values()
    ]


__all__ = ["manifest_json", "rejected_json", "signing_keys", "trusted_keys"]
