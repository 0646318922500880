"""Ed25519 keys: the only module that imports ``cryptography.hazmat``.

A key's id is the lowercase hex SHA-256 of its raw 32-byte public key, so the same key has the
same id everywhere (key files, envelopes, trust policies) whatever encoding carried it.
Public keys travel as PEM SubjectPublicKeyInfo (``NAME.pub``); private keys as PEM PKCS#8
(``NAME.key``), optionally encrypted with a passphrase. Nothing here ever puts key material or a
passphrase into a message or a ``repr``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vmbusops.bundle.errors import KeyFileError

ED25519_SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key, held as its raw 32 bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, signature: bytes, data: bytes) -> bool:
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes, *, source: str) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(
                f"{source} is not a PEM public key",
                hint="give the NAME.pub file written by `vmbusops keys new NAME`",
            ) from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source} is not an Ed25519 public key", hint="vmbusops signs with Ed25519")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


class PrivateKey:
    """An Ed25519 signing key. Its ``repr`` shows the key id only."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(Ed25519PrivateKey.generate())

    def public_key(self) -> PublicKey:
        return PublicKey(
            self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @property
    def keyid(self) -> str:
        return self.public_key().keyid

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def to_pem(self, passphrase: bytes | None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, data: bytes, *, passphrase: bytes | None, source: str) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as exc:
            if passphrase is None:
                raise KeyFileError(
                    f"private key {source} is encrypted",
                    hint="give its passphrase (--passphrase, or VMBUSOPS_KEY_PASSPHRASE)",
                ) from exc
            raise KeyFileError(
                f"private key {source} is not encrypted, but a passphrase was given",
                hint="drop --passphrase / VMBUSOPS_KEY_PASSPHRASE for this key",
            ) from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(
                f"cannot load private key {source}: wrong passphrase, or not a PEM private key",
                hint="check the passphrase and that the file was written by `vmbusops keys new`",
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} is not an Ed25519 private key", hint="vmbusops signs with Ed25519")
        return cls(key)

    @staticmethod
    def is_encrypted_pem(data: bytes) -> bool:
        return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data

    def __repr__(self) -> str:
        return f"PrivateKey(keyid={self.keyid[:16]}...)"
