"""Test builders: the one way tests make a simulated lab and a bundle manifest.

A lab is a list of :class:`VM` plus a few ``[host]`` settings, written as TOML by :func:`lab_text`
(so a lab file in a test is never spelled out by hand, and a new lab key is added here once).
A manifest is built from targets and steps by :func:`bundle_doc` (what ``bundle.toml`` says),
:func:`manifest_doc` (what a built bundle's signed manifest says) and :func:`manifest` (that,
parsed by the product). Tests that exercise the lab or manifest *parsers* keep their hostile text
inline; everything else comes from here. A journal as another version of vmbusops left it is
:func:`journal_as_left`.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from vmbusops.bundle.manifest import Manifest, manifest_from_dict
from vmbusops.engine.journal import Journal

#: The password of every guest of a lab built without a ``password_seed``, so that one credential
#: reference serves a whole job. Made per test run and never printed.
PASSWORD = "Eng!" + secrets.token_hex(8)
#: The credential reference the built manifests name (tests store PASSWORD under it).
CREDENTIAL = "lab-admin"


@dataclass(frozen=True)
class VM:
    """One ``[[vm]]`` of a lab. ``more`` carries the rest of the lab's VM keys as they are written
    in TOML (services, processes, hotfixes, features, updates, files, computer_name, ...)."""

    name: str
    state: str = "Running"
    guest_services: bool = True
    password: str | None = None
    latency_ms: float | None = None
    faults: Mapping[str, Any] = field(default_factory=dict)
    more: Mapping[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "state": self.state, "guest_services": self.guest_services}
        if self.password is not None:
            out["password"] = self.password
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        out.update(self.more)
        if self.faults:
            out["faults"] = dict(self.faults)
        return out


def lab_doc(
    vms: Iterable[VM],
    *,
    name: str = "HV-TEST",
    session_open_ms: float = 0,
    boot_seconds: float = 0.5,
    password_seed: str | None = None,
    groups: Sequence[Mapping[str, Any]] = (),
    **host: Any,
) -> dict[str, Any]:
    """A lab as the TOML parser reads it; ``host`` adds other ``[host]`` keys (crash_on, ...).

    Without a ``password_seed`` every VM that names no password gets :data:`PASSWORD`; with one,
    the simulator derives such a VM's password from the seed (``lab_password``). ``groups`` are
    the lab's ``[[group]]`` tables, as written in TOML.
    """
    head: dict[str, Any] = {"name": name, "session_open_ms": session_open_ms, "boot_seconds": boot_seconds}
    if password_seed is not None:
        head["password_seed"] = password_seed
    head.update(host)
    docs = [vm.doc() for vm in vms]
    if password_seed is None:
        for doc in docs:
            doc.setdefault("password", PASSWORD)
    return {"host": head, "vm": docs, **({"group": [dict(g) for g in groups]} if groups else {})}


def lab_text(vms: Iterable[VM], **host: Any) -> str:
    return tomli_w.dumps(lab_doc(vms, **host))


def write_lab(directory: Path, vms: Iterable[VM], **host: Any) -> Path:
    """Write the lab under ``directory`` with a name of its own; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"lab-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(lab_text(vms, **host), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- manifests


def script(name: str, text: str, **extra: Any) -> dict[str, Any]:
    """An inline script step."""
    return {"kind": "script", "name": name, "inline": text, **extra}


def bundle_doc(
    vms: Sequence[str],
    steps: Sequence[Mapping[str, Any]],
    *,
    name: str = "test-job",
    credential: str = CREDENTIAL,
    execution: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """What an author writes in ``bundle.toml`` (``fields``: schedule, ...)."""
    doc: dict[str, Any] = {
        "name": name,
        "version": 1,
        "credential": credential,
        "targets": {"vms": list(vms)},
        "steps": [dict(s) for s in steps],
    }
    if execution is not None:
        doc["execution"] = dict(execution)
    doc.update(fields)
    return doc


def write_bundle_source(directory: Path, doc: Mapping[str, Any], files: Mapping[str, str | bytes] = {}) -> Path:
    """A bundle source folder: ``bundle.toml`` from ``doc`` and ``files`` (relative path -> content)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bundle.toml").write_text(tomli_w.dumps(dict(doc)), encoding="utf-8")
    write_files(directory, files)
    return directory


def write_files(root: Path, files: Mapping[str, str | bytes]) -> list[dict[str, Any]]:
    """Write ``files`` under ``root``; returns their manifest entries (path, size, sha256)."""
    entries = []
    for rel, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return entries


def manifest_doc(
    vms: Sequence[str],
    steps: Sequence[Mapping[str, Any]],
    *,
    files: Sequence[Mapping[str, Any]] = (),
    issued: datetime | None = None,
    expires: datetime | None = None,
    **bundle: Any,
) -> dict[str, Any]:
    """What a built bundle's manifest says: :func:`bundle_doc` plus id, issue and expiry times, files."""
    issued = issued or datetime.now(UTC)
    return {
        **bundle_doc(vms, steps, **bundle),
        "id": str(uuid.uuid4()),
        "issued": issued.isoformat(),
        "expires": (expires or issued + timedelta(hours=1)).isoformat(),
        "files": [dict(f) for f in files],
    }


def manifest(vms: Sequence[str], steps: Sequence[Mapping[str, Any]], **fields: Any) -> Manifest:
    """An unsigned manifest for in-process tests (the command line only ever runs verified bundles)."""
    return manifest_from_dict(manifest_doc(vms, steps, **fields))


def journal_as_left(path: Path, sql: str) -> Path:
    """A new journal at ``path``, then ``sql`` run on it: the journal as an older or a newer
    vmbusops would have left it (a table or column it lacks, another schema number)."""
    Journal(path).close()
    db = sqlite3.connect(path)
    db.executescript(sql)
    db.close()
    return path
