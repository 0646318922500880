"""A simulated guest's whole state, to compare before and after (checkpoints, rollbacks).

Everything the simulator keeps of a guest lives under its root in the state directory: the ``C``
drive's files, ``system.json`` (services, features, registry, environment, installed updates, the
LCM's state and history, a pending reboot), ``lcm.json`` (the LCM's settings, status and its
current, pending and previous documents), ``tasks.json`` (scheduled tasks) and anything a later
version adds there. :func:`guest_state` reads all of it: every file by path with its SHA-256 and
size, JSON files also parsed (so a difference reads as a difference in services or tasks, not
as two digests), and the views a test names most (services, hotfixes, DSC, tasks).
:func:`assert_same_guest` compares two such states and fails with the paths and keys that differ.

Use it with a store (``guest_state(store, "web01")``) or with what the agent's simulator uses
(``guest_state_at(home / "sim", lab_path, "web01")``: the state directory and the lab file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vmbusops.sim.lab import load_lab
from vmbusops.sim.state import HostStore

_VIEWS = {"system.json": "system", "lcm.json": "dsc", "tasks.json": "tasks"}


def _parsed(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None


def guest_state(store: HostStore, vm: str) -> dict[str, Any]:
    """Every file of the guest (relative path -> sha256, size), JSON state parsed, and views."""
    spec = store.lab.find(vm)
    if spec is None:
        raise KeyError(vm)
    root = store.guest_root(spec)
    files: dict[str, dict[str, Any]] = {}
    folders: list[str] = []
    parsed: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            folders.append(rel)
            continue
        data = path.read_bytes()
        files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        if path.suffix == ".json" and path.parent == root:
            parsed[rel] = _parsed(path)
    system = parsed.get("system.json") or {}
    return {
        "files": files,
        "folders": folders,
        "json": parsed,
        "services": system.get("services"),
        "updates_installed": system.get("updates_installed"),
        "hotfixes_seeded": [h.id for h in spec.hotfixes],
        "dsc": parsed.get("lcm.json"),
        "tasks": parsed.get("tasks.json"),
    }


def guest_state_at(state_dir: Path, lab: Path | str | None, vm: str) -> dict[str, Any]:
    """:func:`guest_state` of the simulator state in ``state_dir`` made from lab file ``lab``."""
    store = HostStore(load_lab(lab), state_dir)
    try:
        return guest_state(store, vm)
    finally:
        store.close()


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two guest states, one line each (empty when they are the same)."""
    out: list[str] = []
    for rel in sorted(set(before["files"]) | set(after["files"])):
        b, a = before["files"].get(rel), after["files"].get(rel)
        if b is None:
            out.append(f"file added: {rel}")
        elif a is None:
            out.append(f"file removed: {rel}")
        elif a != b:
            out.append(f"file changed: {rel}")
    for rel in sorted(set(before["folders"]) ^ set(after["folders"])):
        out.append(f"folder {'added' if rel in after['folders'] else 'removed'}: {rel}")
    for key in ("services", "updates_installed", "dsc", "tasks"):
        if before.get(key) != after.get(key):
            out.append(f"{key} differ: {before.get(key)!r} != {after.get(key)!r}")
    return out


def assert_same_guest(before: dict[str, Any], after: dict[str, Any]) -> None:
    diff = differences(before, after)
    assert not diff, "the guest is not as it was:\n" + "\n".join(diff)
