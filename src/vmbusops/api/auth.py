"""Who may do what: bearer tokens and client certificates, each with a scope.

Theory of operation
-------------------
A *principal* is whoever made a request: a bearer token, or a TLS client certificate the agent
was told to accept. Each carries a scope: the operations it may perform (:class:`Operation`) and
the VM name globs it may see. A job is visible to a principal only if **every** VM the job targets
matches one of its globs (a job with no runs only to a principal that may see every VM), so a
tenant's token never learns that another tenant's job exists: it is absent from lists, and asking
for it by id answers 404, exactly like a job that does not exist.

Tokens look like ``vmo_<id>_<secret>``. The id is public (it names the token in logs and in
``vmbusops agent token list``); the secret is 32 random bytes, shown once when the token is made
and stored only as its SHA-256 (a random 256-bit secret needs no slow hash), compared in constant
time. The store is a small SQLite file, ``$VMBUSOPS_HOME/agent/principals.sqlite``, asked on every
request whether it has changed (SQLite's ``data_version``, which any other connection's commit
moves), and a token's row read again when it has, so that a revocation takes effect at once.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmbusops.errors import ConfigError
from vmbusops.home import home_path
from vmbusops.storage import UntilCommit, open_wal_database

TOKEN_PREFIX = "vmo_"  # noqa: S105 - the public prefix of every token, not a secret
#: What a principal's name or VM glob may not hold: control characters (C0, DEL, C1) and the
#: bidirectional overrides and isolates, which every listing would have to hide.
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_TOKEN_RE = re.compile(r"vmo_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,          -- token | cert
    name        TEXT NOT NULL,
    secret_hash TEXT,                   -- tokens: sha256 of the secret
    fingerprint TEXT UNIQUE,            -- certs: sha256 of the DER certificate
    operations  TEXT NOT NULL,
    vms         TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    revoked_at  REAL
);
"""


class Operation(enum.StrEnum):
    SUBMIT = "submit"
    READ = "read"
    CANCEL = "cancel"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    id: str
    kind: str
    name: str
    operations: frozenset[Operation]
    vms: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}({self.name})"

    def may(self, operation: Operation) -> bool:
        return operation in self.operations

    def covers_vm(self, vm: str) -> bool:
        return _scope_matcher(self.vms)(vm.casefold()) is not None

    def sees_all_vms(self) -> bool:
        return "*" in self.vms

    def sees_job(self, vms: Sequence[str]) -> bool:
        """Whether every VM of a job is in scope (a status call asks it of hundreds of names)."""
        if self.sees_all_vms():  # '*' matches every name
            return True
        if not vms:
            return False
        match = _scope_matcher(self.vms)
        return all(match(vm.casefold()) is not None for vm in vms)

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def submitter(self, certificate: bytes | None = None) -> str:
        """Who a job this principal submits is journaled as: ``token:NAME``, or for a client
        certificate ``cert:`` and its subject (the name it was allowed under if it has none)."""
        if self.kind == "cert" and certificate is not None:
            from cryptography import x509

            try:
                subject = x509.load_der_x509_certificate(certificate).subject.rfc4514_string()
            except ValueError:
                subject = ""
            if subject:
                return f"cert:{subject}"
        return f"{self.kind}:{self.name}"


@functools.lru_cache(maxsize=256)
def _scope_matcher(globs: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One pattern for a scope's globs, matched against a casefolded name: what
    ``any(fnmatch.fnmatchcase(name, g.casefold()) for g in globs)`` says, in one match."""
    if not globs:
        return lambda _: None
    return re.compile("|".join(f"(?:{fnmatch.translate(g.casefold())})" for g in globs)).match


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a credential was not accepted; ``who`` is safe to log (never a secret)."""

    who: str
    why: str


def parse_operations(values: Iterable[str]) -> frozenset[Operation]:
    ops: set[Operation] = set()
    for value in values:
        for raw in value.split(","):
            part = raw.strip().lower()
            if not part:
                continue
            if part == "all":
                ops.update(Operation)
                continue
            try:
                ops.add(Operation(part))
            except ValueError:
                known = ", ".join(o.value for o in Operation)
                raise ConfigError(f"unknown operation {part!r}", hint=f"known: {known}, all") from None
    if not ops:
        raise ConfigError("a scope needs at least one operation", hint="for example --scope read,submit")
    return frozenset(ops)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def principals_path() -> Path:
    return home_path("agent", "principals.sqlite")


class PrincipalStore:
    """Tokens and accepted client certificates, with their scopes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or principals_path()
        self._lock = threading.Lock()
        self._db = open_wal_database(self.path, _SCHEMA, what="the agent's principal store")
        self.path.chmod(0o600)
        #: Token id -> (its secret's hash, its principal), kept until another connection commits,
        #: and emptied when this one writes.
        self._tokens: UntilCommit[str, tuple[str, Principal]] = UntilCommit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrincipalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    @staticmethod
    def _principal(row: sqlite3.Row) -> Principal:
        return Principal(
            id=row["id"],
            kind=row["kind"],
            name=row["name"],
            operations=frozenset(Operation(o) for o in json.loads(row["operations"])),
            vms=tuple(json.loads(row["vms"])),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
        )

    def _insert(
        self,
        *,
        kind: str,
        name: str,
        operations: frozenset[Operation],
        vms: Sequence[str],
        expires_at: float | None,
        secret_hash: str | None = None,
        fingerprint: str | None = None,
    ) -> str:
        if not vms:
            raise ConfigError(
                "a scope needs at least one VM glob", hint="for example --vm 'tenant-a-*' (or '*')"
            )
        if _UNSHOWN.search(name) is not None or any(_UNSHOWN.search(v) for v in vms):
            raise ConfigError(
                f"a {kind}'s name and VM globs are plain text; {name!r} or a glob holds a control or"
                " bidirectional formatting character",
                hint="give letters, digits, spaces and punctuation",
            )
        ident = secrets.token_hex(6)
        with self._lock:
            self._tokens.clear()
            try:
                self._db.execute(
                    "INSERT INTO principals (id, kind, name, secret_hash, fingerprint, operations, vms,"
                    " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ident, kind, name, secret_hash, fingerprint,
                        json.dumps(sorted(o.value for o in operations)), json.dumps(list(vms)),
                        time.time(), expires_at,
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise ConfigError(f"that {kind} is already registered: {exc}") from exc
        return ident

    def create_token(
        self, *, name: str, operations: frozenset[Operation], vms: Sequence[str], expires_at: float | None
    ) -> tuple[Principal, str]:
        """A new token; returns it with its full text, which is never stored nor shown again."""
        secret = secrets.token_urlsafe(32)
        ident = self._insert(
            kind="token", name=name, operations=operations, vms=vms, expires_at=expires_at,
            secret_hash=_digest(secret),
        )  # fmt: skip
        return self.get(ident), f"{TOKEN_PREFIX}{ident}_{secret}"

    def allow_certificate(
        self,
        *,
        name: str,
        fingerprint: str,
        operations: frozenset[Operation],
        vms: Sequence[str],
        expires_at: float | None,
    ) -> Principal:
        fp = fingerprint.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", fp):
            raise ConfigError("a certificate fingerprint is its SHA-256 in hex (64 digits, colons allowed)")
        ident = self._insert(
            kind="cert", name=name, operations=operations, vms=vms, expires_at=expires_at, fingerprint=fp
        )
        return self.get(ident)

    def get(self, ident: str) -> Principal:
        rows = self._rows("SELECT * FROM principals WHERE id = ?", (ident,))
        if not rows:
            raise ConfigError(f"no token or certificate with id {ident}")
        return self._principal(rows[0])

    def list(self) -> list[Principal]:
        return [self._principal(r) for r in self._rows("SELECT * FROM principals ORDER BY created_at")]

    def revoke(self, ident: str) -> Principal:
        with self._lock:
            self._tokens.clear()
            changed = self._db.execute(
                "UPDATE principals SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), ident),
            ).rowcount
        principal = self.get(ident)
        if not changed and principal.revoked_at is None:
            raise ConfigError(f"no token or certificate with id {ident}")
        return principal

    # ------------------------------------------------------------------ authentication
    def authenticate_token(self, token: str, now: float) -> Principal | Refusal:
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return Refusal("anonymous", "malformed bearer token")
        ident, secret = match.groups()
        found = self._token(ident)
        if found is None:
            return Refusal(f"token:{ident}", "unknown token")
        secret_hash, principal = found
        if not hmac.compare_digest(secret_hash, _digest(secret)):
            return Refusal(f"token:{ident}", "wrong token secret")
        if principal.revoked_at is not None:
            return Refusal(str(principal), "token revoked")
        if not principal.active(now):
            return Refusal(str(principal), "token expired")
        return principal

    def _token(self, ident: str) -> tuple[str, Principal] | None:
        """A token's secret hash and principal: as kept, while no connection has committed since
        it was read (a row read after that check is at least as new as it); an unknown id is
        read each time (kept ids are the store's own, at most 1,024)."""
        with self._lock:
            return self._tokens.get(self._db, ident, lambda: self._read_token(ident))

    def _read_token(self, ident: str) -> tuple[str, Principal] | None:
        cur = self._db.execute("SELECT * FROM principals WHERE id = ? AND kind = 'token'", (ident,))
        cur.row_factory = sqlite3.Row
        rows = cur.fetchall()
        return (rows[0]["secret_hash"], self._principal(rows[0])) if rows else None

    def authenticate_certificate(self, der: bytes, now: float) -> Principal | Refusal:
        fp = hashlib.sha256(der).hexdigest()
        rows = self._rows("SELECT * FROM principals WHERE fingerprint = ? AND kind = 'cert'", (fp,))
        if not rows:
            return Refusal(f"cert:sha256={fp[:16]}", "client certificate not registered")
        principal = self._principal(rows[0])
        if not principal.active(now):
            return Refusal(str(principal), "client certificate revoked or expired")
        return principal
