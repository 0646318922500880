"""Building a bundle from a source directory, and adding signatures to it.

A source directory holds ``bundle.toml`` and the files it names. ``bundle.toml`` is the manifest
as a person writes it: durations may be strings (``"90s"``, ``"5m"``, ``"2h"``, ``"7d"``) under
names without the ``_seconds`` suffix, ``expires`` may be a duration from build time, and the file
list is not written by hand: every file a step names (a copy source, a script, MOFs, a
meta-configuration, every file below a DSC module folder) and every path under ``include`` is
hashed and listed. ``id`` and ``issued`` are filled in at build time.

Signing re-reads the bundle, checks every member against the manifest (a signer vouches for the
bytes, so it must look at them), then rewrites the file with the new envelope in front and the
payload members copied verbatim.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vmbusops.bundle.archive import CHUNK, TarWriter
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.dsse import PAYLOAD_TYPE, Envelope
from vmbusops.bundle.errors import BundleSourceError, ManifestError
from vmbusops.bundle.manifest import Manifest, manifest_from_dict
from vmbusops.bundle.member_paths import ENVELOPE_MEMBER, check_bundle_path
from vmbusops.bundle.schema import format_time
from vmbusops.bundle.steps import STEP_KINDS
from vmbusops.bundle.verify import DEFAULT_LIMITS, Limits, check_contents

SOURCE_FILE = "bundle.toml"
DEFAULT_LIFETIME = timedelta(days=7)
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_TOP_LEVEL = {
    "name",
    "version",
    "expires",
    "credential",
    "targets",
    "steps",
    "execution",
    "schedule",
    "guard",
    "include",
}
_STEP_DURATIONS = {"timeout": "timeout_seconds"}
_RETRY_DURATIONS = {"backoff": "backoff_seconds"}
_EXECUTION_DURATIONS = {
    "target_timeout": "target_timeout_seconds",
    "delivery_timeout": "delivery_timeout_seconds",
}
_SCHEDULE_DURATIONS = {"window": "window_seconds", "cutoff": "cutoff_seconds", "jitter": "jitter_seconds"}
# The fields of every step kind that name bundle paths, holding one path or a list of them. Their
# order is the order of the manifest's file list (and so part of the signed bytes): single paths
# first, then lists, each in the order the step kinds declare them.
_STEP_PATH_FIELDS = tuple(
    dict.fromkeys(k for c in STEP_KINDS.values() for k, is_list in c.bundle_ref_fields() if not is_list)
)
_STEP_PATH_LIST_FIELDS = tuple(
    dict.fromkeys(k for c in STEP_KINDS.values() for k, is_list in c.bundle_ref_fields() if is_list)
)


def parse_duration(value: object, where: str) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"1h30m"``, ``"7d"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        parts = _DURATION.findall(value)
        if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise BundleSourceError(
        f"{SOURCE_FILE}: {where} must be seconds or a duration like '90s', '5m', '2h', '7d'"
    )


def _rename_durations(table: object, names: dict[str, str], where: str) -> Any:
    if not isinstance(table, dict):
        return table
    out = dict(table)
    for src, dst in names.items():
        if src in out:
            out[dst] = parse_duration(out.pop(src), f"{where}.{src}")
    return out


def _referenced_paths(doc: dict[str, Any]) -> list[str]:
    """Files and folders the steps name, plus ``include``; tolerant of wrong types (the manifest
    parser reports those precisely). A step's path fields are looked for under every kind's names,
    whatever its own kind, so a misplaced or misspelt one is still found and reported."""
    refs: list[str] = []
    for step in doc.get("steps", []) if isinstance(doc.get("steps"), list) else []:
        if not isinstance(step, dict):
            continue
        refs.extend(step[k] for k in _STEP_PATH_FIELDS if isinstance(step.get(k), str))
        for key in _STEP_PATH_LIST_FIELDS:
            if isinstance(step.get(key), list):
                refs.extend(v for v in step[key] if isinstance(v, str))
    include = doc.get("include", [])
    if not isinstance(include, list) or not all(isinstance(p, str) for p in include):
        raise BundleSourceError(f"{SOURCE_FILE}: include must be a list of paths")
    refs.extend(include)
    return refs


def _collect_files(root: Path, refs: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}

    def add(rel: str) -> None:
        try:
            check_bundle_path(rel, what="source path")
        except ManifestError as exc:
            raise BundleSourceError(f"{SOURCE_FILE}: {exc.message}", hint=exc.hint) from None
        local = root.joinpath(*rel.split("/"))
        if local.is_symlink():
            raise BundleSourceError(f"{rel} is a symbolic link; bundles hold regular files only")
        if local.is_dir():
            for child in sorted(local.iterdir()):
                add(f"{rel}/{child.name}")
        elif local.is_file():
            files[rel] = local
        elif local.exists():
            raise BundleSourceError(f"{rel} is not a regular file")
        else:
            raise BundleSourceError(f"{SOURCE_FILE} names {rel}, which does not exist in {root}")

    for ref in refs:
        add(ref.rstrip("/"))
    return files


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while got := f.readinto(buffer):
            digest.update(view[:got])
            size += got
    return size, digest.hexdigest()


def manifest_from_source(
    root: Path, *, now: datetime, bundle_id: str | None = None
) -> tuple[Manifest, dict[str, Path]]:
    source = root / SOURCE_FILE
    try:
        doc = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleSourceError(
            f"no {SOURCE_FILE} in {root}", hint="start from: vmbusops bundle init DIR"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleSourceError(f"cannot read {source}: {exc}") from exc
    unknown = set(doc) - _TOP_LEVEL
    if unknown:
        raise BundleSourceError(f"{SOURCE_FILE} has unknown top-level field(s): {', '.join(sorted(unknown))}")
    files = _collect_files(root, _referenced_paths(doc))

    expires_raw = doc.pop("expires", None)
    if isinstance(expires_raw, datetime):
        expires = expires_raw if expires_raw.tzinfo else expires_raw.replace(tzinfo=UTC)
    elif expires_raw is None:
        expires = now + DEFAULT_LIFETIME
    else:
        expires = now + timedelta(seconds=parse_duration(expires_raw, "expires"))
    doc.pop("include", None)

    steps = []
    for i, raw_step in enumerate(doc.get("steps", []) if isinstance(doc.get("steps"), list) else []):
        step = _rename_durations(raw_step, _STEP_DURATIONS, f"steps[{i}]")
        if isinstance(step, dict) and "retry" in step:
            step["retry"] = _rename_durations(step["retry"], _RETRY_DURATIONS, f"steps[{i}].retry")
        steps.append(step)
    manifest_doc: dict[str, Any] = {
        **doc,
        "id": bundle_id or str(uuid.uuid4()),
        "issued": format_time(now),
        "expires": format_time(expires),
        "steps": steps,
        "files": [],
    }
    if "execution" in doc:
        manifest_doc["execution"] = _rename_durations(doc["execution"], _EXECUTION_DURATIONS, "execution")
    if "schedule" in doc:
        manifest_doc["schedule"] = _rename_durations(doc["schedule"], _SCHEDULE_DURATIONS, "schedule")
    if isinstance(doc.get("guard"), dict) and isinstance(doc["guard"].get("health"), dict):
        guard = manifest_doc["guard"] = dict(doc["guard"])
        guard["health"] = _rename_durations(guard["health"], _STEP_DURATIONS, "guard.health")
    for rel, local in files.items():
        size, sha = _hash_file(local)
        manifest_doc["files"].append({"path": rel, "size": size, "sha256": sha})
    try:
        manifest = manifest_from_dict(manifest_doc)
    except ManifestError as exc:
        raise BundleSourceError(
            f"{SOURCE_FILE}: {exc.message.removeprefix('manifest.')}", hint=exc.hint
        ) from None
    from vmbusops.dsc.documents import manifest_documents_problem

    wrong = manifest_documents_problem(manifest, lambda path: files[path].read_text(encoding="utf-8-sig"))
    if wrong is not None:  # refused here, before anything is signed, as acceptance would refuse it
        raise BundleSourceError(f"{SOURCE_FILE}: step {wrong[0]}: {wrong[1].message}", hint=wrong[1].hint)
    return manifest, files


def _replace_atomically(out: Path) -> tuple[Path, Any]:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    return tmp, tmp.open("wb")


def build_bundle(source_dir: Path, out: Path, *, now: datetime | None = None) -> Manifest:
    """Write an unsigned bundle; sign it with :func:`sign_bundle`."""
    manifest, files = manifest_from_source(source_dir, now=now or datetime.now(UTC))
    envelope = Envelope(payload_type=PAYLOAD_TYPE, payload=manifest.to_json())
    tmp, stream = _replace_atomically(out)
    try:
        with stream:
            writer = TarWriter(stream)
            writer.add_bytes(ENVELOPE_MEMBER, envelope.to_json())
            for entry in manifest.files:
                writer.add_file(entry.path, files[entry.path], entry.size)
            writer.close()
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleSourceError(f"cannot write {out}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def sign_bundle(path: Path, key: PrivateKey, *, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Add ``key``'s signature after checking every member; rewrites ``path`` in place, atomically."""
    envelope, _manifest, payload_offset = check_contents(path, limits=limits)
    signed = envelope.with_signature(key)
    tmp, stream = _replace_atomically(path)
    try:
        with stream, path.open("rb") as src:
            writer = TarWriter(stream)
            writer.add_bytes(ENVELOPE_MEMBER, signed.to_json())
            src.seek(payload_offset)
            writer.copy_raw(src)
            stream.flush()
            os.fsync(stream.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleSourceError(f"cannot rewrite {path}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return signed
