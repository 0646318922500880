"""Making good and hostile bundles for tests.

Good bundles come from the real code path (scaffold -> build -> sign). Hostile ones are made by
re-writing a good bundle's members with the standard library's tarfile, which is an independent
tar writer: links, devices, FIFOs, odd paths and duplicates are what an attacker would produce.
"""

from __future__ import annotations

import io
import tarfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import Manifest, StepKind
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy
from vmbusops.bundle.scaffold import write_example


@dataclass
class Member:
    info: tarfile.TarInfo
    data: bytes | None


def make_source(directory: Path, **overrides: Any) -> Path:
    """The example bundle source, with top-level bundle.toml fields replaced."""
    write_example(directory)
    toml_path = directory / "bundle.toml"
    doc = tomllib.loads(toml_path.read_text())
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    toml_path.write_text(tomli_w.dumps(doc))
    return directory


def make_bundle(
    tmp: Path,
    name: str,
    signers: Sequence[PrivateKey],
    *,
    now: datetime | None = None,
    **overrides: Any,
) -> tuple[Path, Manifest]:
    source = make_source(tmp / f"src-{name}", **overrides)
    out = tmp / f"{name}.vmb"
    manifest = build_bundle(source, out, now=now)
    for key in signers:
        sign_bundle(out, key)
    return out, manifest


def read_members(path: Path) -> list[Member]:
    out = []
    with tarfile.open(path, "r:") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info) if info.isfile() else None
            out.append(Member(info, f.read() if f else None))
    return out


def write_members(path: Path, members: Sequence[Member], *, fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for m in members:
            tar.addfile(m.info, io.BytesIO(m.data) if m.data is not None else None)
    return path


def rewrite(src: Path, dst: Path, change: Callable[[list[Member]], list[Member]]) -> Path:
    return write_members(dst, change(read_members(src)))


def regular(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return Member(info, data)


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return Member(info, None)


def data_offset(path: Path, member: str) -> int:
    with tarfile.open(path, "r:") as tar:
        return tar.getmember(member).offset_data


def trusting(
    *keys: PrivateKey,
    vms: tuple[str, ...] = ("web*", "db01"),
    credentials: tuple[str, ...] = ("lab-admin",),
    steps: frozenset[StepKind] = frozenset(StepKind),
    threshold: int = 1,
    until: datetime | None = None,
) -> TrustPolicy:
    policy = TrustPolicy()
    scope = Scope(keys=(), vms=vms, credentials=credentials, steps=steps, threshold=threshold, until=until)
    for i, key in enumerate(keys):
        policy = policy.with_key(TrustedKey(name=f"signer{i}", public=key.public_key()), scope)
    return policy
