"""Key files on disk: ``NAME.key`` (private, owner-only, optionally passphrase-encrypted) and
``NAME.pub`` (public, shareable). Keys live under ``$VMBUSOPS_HOME/keys`` unless told otherwise."""

from __future__ import annotations

import os
import re
from pathlib import Path

from vmbusops.bundle.crypto import PrivateKey, PublicKey
from vmbusops.bundle.errors import KeyFileError
from vmbusops.home import private_dir, private_file

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def write_keypair(directory: Path, name: str, *, passphrase: bytes | None) -> tuple[Path, Path, PublicKey]:
    """Generate an Ed25519 key pair; refuses to overwrite. Returns (private path, public path, key)."""
    if not _KEY_NAME.fullmatch(name):
        raise KeyFileError(f"key name {name!r} must be letters, digits, '.', '_' or '-'")
    private_dir(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (private_path, public_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists", hint="choose another name, or remove the old key first")
    key = PrivateKey.generate()
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.to_pem(passphrase))
            f.flush()
            os.fsync(f.fileno())
        private_file(public_path).write_bytes(key.public_key().to_pem())
    except OSError as exc:
        raise KeyFileError(f"cannot write key files in {directory}: {exc.strerror}") from exc
    return private_path, public_path, key.public_key()


def read_private_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc


def load_private_key(path: Path, *, passphrase: bytes | None) -> PrivateKey:
    return PrivateKey.from_pem(read_private_key_file(path), passphrase=passphrase, source=str(path))


def load_public_key(path: Path) -> PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from exc
    return PublicKey.from_pem(data, source=str(path))
