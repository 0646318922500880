"""Guest credentials: a secret type that will not print, and the local encrypted store.

A guest password is held as :class:`Secret`, whose ``str``/``repr`` are redacted, so a stray log
line, exception or f-string cannot leak it; only :meth:`Secret.reveal` gives the text, and it is
called in one place: building the PSCredential that PSRP sends encrypted with the session key.

The store (``$VMBUSOPS_HOME/credentials.json``) keeps, per credential reference, the user name
in clear and the password sealed with AES-256-GCM; the entry's name and user name are the
associated data, so an entry cannot be moved to another name undetected. The key comes from
``VMBUSOPS_CREDENTIAL_PASSPHRASE`` through scrypt when that is set, otherwise from a random
32-byte key file, owner-only, found by :meth:`CredentialStore.key_location`: the config's
``[credentials] key_file``; else ``vmbusops-credentials.key`` in systemd's
``$CREDENTIALS_DIRECTORY`` (``LoadCredentialEncrypted=``, sealed by the TPM or the host key, never
in the home); else ``credentials.key`` in the home. Only a key kept outside the home protects the
store from someone who can read the home (a backup, a copied disk); in the home it is the usual
trade-off of a service that must start unattended. On Windows the key file belongs in a
DPAPI-protected location (not implemented here).

A credential reference (``--credential NAME``, a manifest's ``credential``) becomes a
:class:`GuestCredential` in one function, :func:`resolve_credential`: the store first, then, for
the simulated lab's host kinds, the lab's own administrator. :func:`credential_resolver` wraps it
for the engine, which asks once per target.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmbusops.errors import CredentialStoreError, NoSuchCredentialError
from vmbusops.home import home_dir, private_dir

if TYPE_CHECKING:
    from vmbusops.config import Config

ENV_PASSPHRASE: Final = "VMBUSOPS_CREDENTIAL_PASSPHRASE"  # noqa: S105 (a variable name)
#: Set by systemd for a unit with ``LoadCredential=`` / ``LoadCredentialEncrypted=``.
ENV_SYSTEMD_CREDENTIALS: Final = "CREDENTIALS_DIRECTORY"
SYSTEMD_KEY_NAME: Final = "vmbusops-credentials.key"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LAB_CREDENTIAL: Final = "lab-admin"
#: Host kinds whose guests are the simulator's lab (its credentials resolve ``lab-admin``).
LAB_HOST_KINDS: Final = ("sim", "pwsh-lab")


class Secret:
    """A string that never shows itself by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class GuestCredential:
    """A user name and password for PowerShell Direct into a guest."""

    username: str
    password: Secret
    reference: str = ""

    def __repr__(self) -> str:
        return f"GuestCredential(username={self.username!r}, reference={self.reference!r})"


def check_reference(name: str) -> str:
    if not _NAME_RE.match(name):
        raise CredentialStoreError(
            f"{name!r} is not a valid credential reference",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


class CredentialStore:
    """The encrypted store of guest credentials under VMBUSOPS_HOME."""

    def __init__(self, directory: Path | None = None, *, key_file: Path | None = None) -> None:
        self._in_home = directory is None
        self._dir = directory or home_dir()
        self._path = self._dir / "credentials.json"
        self._key_file = key_file

    def key_location(self) -> tuple[Path, bool]:
        """Where the sealing key file is, and whether it may be created there when missing:
        ``key_file`` if given; else (for the home's store) the config's ``[credentials] key_file``;
        else systemd's credential if the unit passes one (read-only: never created there); else
        beside the store."""
        if self._key_file is not None:
            return self._key_file, True
        if self._in_home:
            from vmbusops.config import load_config

            configured = load_config().credential_key_file
            if configured is not None:
                return Path(configured), True
        systemd = os.environ.get(ENV_SYSTEMD_CREDENTIALS)
        if systemd and (Path(systemd) / SYSTEMD_KEY_NAME).is_file():
            return Path(systemd) / SYSTEMD_KEY_NAME, False
        return self._dir / "credentials.key", True

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> dict[str, Any]:
        if not self._path.exists():
            return {"version": 1, "kdf": None, "entries": {}}
        try:
            data = json.loads(self._path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise CredentialStoreError(
                f"the credential store {self._path} cannot be read: {exc.__class__.__name__}",
                hint="restore it from backup, or move it away and set the credentials again",
            ) from None
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("entries"), dict):
            raise CredentialStoreError(f"the credential store {self._path} is not in a format this version knows")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        private_dir(self._dir)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)

    def _key(self, data: dict[str, Any], *, create: bool) -> bytes:
        passphrase = os.environ.get(ENV_PASSPHRASE)
        if passphrase:
            kdf = data.get("kdf")
            if kdf is None:
                if not create:
                    raise CredentialStoreError(
                        f"{ENV_PASSPHRASE} is set but the store {self._path} was written with its key file",
                        hint=f"unset {ENV_PASSPHRASE}, or set the credentials again with it set",
                    )
                kdf = {"name": "scrypt", "salt": base64.b64encode(os.urandom(16)).decode(), "n": 2**15}
                data["kdf"] = kdf
            salt = base64.b64decode(kdf["salt"])
            return Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=8, p=1).derive(passphrase.encode("utf-8"))
        if data.get("kdf") is not None:
            raise CredentialStoreError(
                f"the credential store {self._path} is sealed with a passphrase",
                hint=f"set {ENV_PASSPHRASE}",
            )
        key_path, may_create = self.key_location()
        try:
            if key_path.exists():
                key = key_path.read_bytes()
                if len(key) != 32:
                    raise CredentialStoreError(
                        f"the credential key file {key_path} is damaged (wrong length)",
                        hint="it holds 32 random bytes, e.g. from: head -c 32 /dev/urandom",
                    )
                return key
            if not create or not may_create:
                raise CredentialStoreError(f"the credential key file {key_path} is missing")
            if key_path.parent == self._dir:
                private_dir(self._dir)
            key = AESGCM.generate_key(bit_length=256)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
        except OSError as exc:
            raise CredentialStoreError(
                f"cannot use the credential key file {key_path}: {exc.strerror}",
                hint="check [credentials] key_file in config.toml and that folder's owner",
            ) from None
        return key

    @staticmethod
    def _aad(name: str, username: str) -> bytes:
        return json.dumps([name, username]).encode("utf-8")

    def set(self, name: str, username: str, password: Secret) -> None:
        check_reference(name)
        if not username:
            raise CredentialStoreError("a credential needs a user name")
        data = self._load()
        key = self._key(data, create=True)
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, password.reveal().encode("utf-8"), self._aad(name, username))
        data["entries"][name] = {
            "username": username,
            "nonce": base64.b64encode(nonce).decode(),
            "sealed": base64.b64encode(sealed).decode(),
        }
        self._save(data)

    def get(self, name: str) -> GuestCredential:
        data = self._load()
        entry = data["entries"].get(name)
        if entry is None:
            raise NoSuchCredentialError(
                f"no credential named {name!r} in {self._path}",
                name=name,
                hint=f"create it with: vmbusops cred set {name} --username USER",
            )
        key = self._key(data, create=False)
        try:
            plain = AESGCM(key).decrypt(
                base64.b64decode(entry["nonce"]),
                base64.b64decode(entry["sealed"]),
                self._aad(name, entry["username"]),
            )
        except (InvalidTag, KeyError, ValueError):
            raise CredentialStoreError(
                f"the credential {name!r} cannot be decrypted (wrong key or passphrase, or the entry was altered)",
                hint="set it again with: vmbusops cred set " + name,
            ) from None
        return GuestCredential(entry["username"], Secret(plain.decode("utf-8")), reference=name)

    def names(self) -> list[tuple[str, str]]:
        """(reference, user name) of every stored credential."""
        return sorted((name, entry["username"]) for name, entry in self._load()["entries"].items())

    def remove(self, name: str) -> bool:
        data = self._load()
        if data["entries"].pop(name, None) is None:
            return False
        self._save(data)
        return True


def resolve_credential(reference: str | None, config: Config, host: str | None) -> GuestCredential:
    """The guest credential for a reference: the encrypted store first, then (simulator) the lab's.

    ``host`` is the host kind in use (``config.host`` when None); with no reference, the lab's host
    kinds use ``lab-admin`` and every other kind refuses."""
    kind = host or config.host
    kind = "sim" if kind.startswith("sim:") else kind  # one host of a simulated fleet
    name = reference or (LAB_CREDENTIAL if kind in LAB_HOST_KINDS else None)
    if name is None:
        raise CredentialStoreError(
            "no guest credential given",
            hint="pass --credential NAME (create one with: vmbusops cred set NAME --username USER)",
        )
    store = CredentialStore()
    try:
        return store.get(name)
    except CredentialStoreError:
        if kind not in LAB_HOST_KINDS:
            raise
    cred = _lab_credential(name, config)
    if cred is None:
        raise NoSuchCredentialError(
            f"no credential named {name!r} in {store.path} nor in the simulator's lab",
            name=name,
            hint=f"create it with: vmbusops cred set {name} --username USER",
        )
    return cred


def credential_resolver(config: Config, host: str | None) -> Callable[[str], GuestCredential]:
    """The engine's ``credential_for``: :func:`resolve_credential` for each reference, remembered
    after the first success so the store is read (and its key derived) once per reference."""
    resolved: dict[str, GuestCredential] = {}

    def credential_for(name: str) -> GuestCredential:
        if name not in resolved:
            resolved[name] = resolve_credential(name, config, host)
        return resolved[name]

    return credential_for


def _lab_credential(name: str, config: Config) -> GuestCredential | None:
    """The simulator lab's administrator credential, under the reference ``lab-admin``."""
    if name != LAB_CREDENTIAL:
        return None
    from vmbusops.sim.lab import DEFAULT_USERNAME, lab_admin_password, load_lab

    lab = load_lab(config.lab)
    return GuestCredential(DEFAULT_USERNAME, Secret(lab_admin_password(lab)), reference=name)
