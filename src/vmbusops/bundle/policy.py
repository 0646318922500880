"""The host owner's trust policy: which keys may sign bundles, and what each may make the host do.

``$VMBUSOPS_HOME/trust.toml``, edited by hand or with ``vmbusops trust``::

    [[keys]]
    keyid = "3f1c...64 hex"        # sha256 of the raw Ed25519 public key; must match `public`
    name = "alice"
    public = "base64 of the raw 32-byte public key"

    [[scopes]]
    keys = ["3f1c..."]             # any of these keys may sign for this scope
    vms = ["web*"]                 # VM name globs (case-insensitive)
    credentials = ["lab-admin"]    # credential references ("*" = any)
    steps = ["copy", "script"]     # step kinds allowed
    enable_guest_services = true   # optional: steps may enable the Guest Service Interface
    checkpoints = true             # optional: steps may run under a checkpoint guard (take,
                                   # restore and remove checkpoints of the VMs)
    until = 2027-01-01T00:00:00Z   # optional: the scope ends then
    threshold = 2                  # distinct signers from `keys` needed

A bundle is authorised when one scope covers it whole (every target, the credential, every step
kind, not ended) and at least ``threshold`` of that scope's keys validly signed it. Scopes never
add up: two single-signer scopes do not make a two-signer one.

A target glob is covered only when every VM it could match is covered: a plain name must match
one of the scope's globs; a glob must equal one of them, or the scope glob must be a literal prefix
followed by ``*`` that the target starts with (so ``web*`` covers ``web0?`` but ``web?`` does not
cover ``web*``).

Everything here is on values and text; loading and saving the file are the thin edges.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import tomli_w

from vmbusops.bundle.crypto import PublicKey
from vmbusops.bundle.errors import (
    CheckpointOutOfScopeError,
    CredentialOutOfScopeError,
    ScopeError,
    StepKindOutOfScopeError,
    TargetOutOfScopeError,
    ThresholdNotMetError,
    TrustExpiredError,
    TrustPolicyError,
    UntrustedSignerError,
)
from vmbusops.bundle.manifest import Manifest, StepKind
from vmbusops.home import private_dir, private_file

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedKey:
    name: str
    public: PublicKey

    @property
    def keyid(self) -> str:
        return self.public.keyid


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    keys: tuple[str, ...]
    vms: tuple[str, ...] = ("*",)
    credentials: tuple[str, ...] = ("*",)
    steps: frozenset[StepKind] = frozenset(StepKind)
    until: datetime | None = None
    threshold: int = 1
    #: Steps may turn on the Guest Service Interface (Copy-VMFile needs it; Hyper-V ships it off).
    enable_guest_services: bool = False
    #: Bundles may guard steps with checkpoints: take, restore (which discards whatever the guest
    #: wrote since) and remove checkpoints of the VMs in scope.
    checkpoints: bool = False

    def same_rights(self, other: Scope) -> bool:
        """The same rights, whatever order the VM globs and credentials were listed in."""
        return (
            sorted(self.vms) == sorted(other.vms)
            and sorted(self.credentials) == sorted(other.credentials)
            and self.steps == other.steps
            and self.until == other.until
            and self.threshold == other.threshold
            and self.enable_guest_services == other.enable_guest_services
            and self.checkpoints == other.checkpoints
        )

    def uncovered_targets(self, targets: Iterable[str]) -> list[str]:
        return [t for t in targets if not any(_glob_covers(g, t) for g in self.vms)]

    def allows_credential(self, credential: str) -> bool:
        return any(c in ("*", credential) for c in self.credentials)

    def has_ended(self, reference_time: datetime) -> bool:
        return self.until is not None and reference_time >= self.until


def scope_covers_vm(scope_glob: str, vm: str) -> bool:
    """Whether a scope's VM glob covers a VM (by name, case-insensitively) or a bundle's glob."""
    return _glob_covers(scope_glob, vm)


def _glob_covers(scope_glob: str, target: str) -> bool:
    scope_glob, target = scope_glob.casefold(), target.casefold()
    if not _GLOB_CHARS & set(target):
        return fnmatchcase(target, scope_glob)
    if scope_glob in (target, "*"):
        return True
    prefix = scope_glob[:-1]
    return scope_glob.endswith("*") and not _GLOB_CHARS & set(prefix) and target.startswith(prefix)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustPolicy:
    keys: Mapping[str, TrustedKey] = field(default_factory=dict)
    scopes: tuple[Scope, ...] = ()

    # --- the checks, in the verifier's order ------------------------------------------------

    def public_keys(self) -> dict[str, PublicKey]:
        return {keyid: k.public for keyid, k in self.keys.items()}

    def check_signers(self, signers: frozenset[str], *, signed_by: Iterable[str]) -> None:
        """After signature verification: someone trusted signed, and some scope's threshold is met."""
        if not signers:
            ids = ", ".join(k[:16] for k in signed_by) or "nobody"
            raise UntrustedSignerError(
                f"no signature from a trusted key (signed by: {ids})",
                hint="if you trust the signer, add their public key: vmbusops trust add NAME.pub",
            )
        candidates = [s for s in self.scopes if signers & set(s.keys)]
        if not any(len(signers & set(s.keys)) >= s.threshold for s in candidates):
            need = min((s.threshold for s in candidates), default=1)
            raise ThresholdNotMetError(
                f"signed by {len(signers)} trusted key(s); the trust policy needs at least {need}"
                f" signers from the same scope (have: {', '.join(self._names(signers))})",
                hint="have another key holder in that scope run: vmbusops bundle sign FILE.vmb --key KEY",
            )

    def authorize(self, manifest: Manifest, signers: frozenset[str], *, reference_time: datetime) -> Scope:
        """The scope that allows this bundle; otherwise the most telling :class:`ScopeError`."""
        failures: list[ScopeError | ThresholdNotMetError] = []
        for scope in self.scopes:
            mine = signers & set(scope.keys)
            if not mine:
                continue
            who = ", ".join(self._names(mine))
            uncovered = scope.uncovered_targets(manifest.targets.vms)
            kinds = sorted(k.value for k in manifest.step_kinds() - scope.steps)
            if uncovered:
                failures.append(
                    TargetOutOfScopeError(
                        f"targets {', '.join(uncovered)} are outside the VMs that {who} may sign for"
                        f" ({', '.join(scope.vms)})",
                        hint=f"narrow the bundle's targets, or widen the scope: {self._widen(mine, '--vm GLOB')}",
                        keyid=next(iter(mine)),
                    )
                )
            elif not scope.allows_credential(manifest.credential):
                failures.append(
                    CredentialOutOfScopeError(
                        f"credential {manifest.credential!r} is not one {who} may use"
                        f" (allowed: {', '.join(scope.credentials)})",
                        hint=f"use an allowed credential, or widen the scope: {self._widen(mine, '--credential REF')}",
                        keyid=next(iter(mine)),
                    )
                )
            elif kinds:
                failures.append(
                    StepKindOutOfScopeError(
                        f"step kind(s) {', '.join(kinds)} are not allowed for {who}"
                        f" (allowed: {', '.join(sorted(k.value for k in scope.steps))})",
                        hint=f"drop those steps, or widen the scope: {self._widen(mine, '--steps KINDS')}",
                        keyid=next(iter(mine)),
                    )
                )
            elif manifest.guard is not None and not scope.checkpoints:
                failures.append(
                    CheckpointOutOfScopeError(
                        f"the bundle guards steps with checkpoints, which {who} may not sign for",
                        hint=f"drop the bundle's guard, or allow it: {self._widen(mine, '--checkpoints')}",
                        keyid=next(iter(mine)),
                    )
                )
            elif scope.has_ended(reference_time):
                assert scope.until is not None
                failures.append(
                    TrustExpiredError(
                        f"the trust allowing this bundle for {who} ended at {scope.until.isoformat()}",
                        hint="renew it with: vmbusops trust add PUBKEY --until TIME",
                        keyid=next(iter(mine)),
                    )
                )
            elif len(mine) < scope.threshold:
                failures.append(
                    ThresholdNotMetError(
                        f"the scope allowing this bundle needs {scope.threshold} signers; signed by {who}",
                        hint="another key holder in that scope must run: vmbusops bundle sign FILE --key KEY",
                    )
                )
            else:
                return scope
        if failures:
            # A scope that got furthest (threshold-only) explains best; otherwise the first reason.
            for exc in failures:
                if isinstance(exc, ThresholdNotMetError):
                    raise exc
            raise failures[0]
        raise TargetOutOfScopeError(
            "no trust scope names any of the signing keys", hint="see: vmbusops trust list"
        )

    def _names(self, keyids: Iterable[str]) -> list[str]:
        return sorted(f"{self.keys[k].name} ({k[:12]})" for k in keyids if k in self.keys)

    def _widen(self, keyids: Iterable[str], option: str) -> str:
        """How to give a signer's key ``option``: a trusted key's scope is changed by removing
        it and adding it again (``trust add`` refuses a different scope for a key it has)."""
        names = sorted(self.keys[k].name for k in keyids if k in self.keys)
        name = names[0] if names else "NAME"
        return (
            f"vmbusops trust remove {name}, then vmbusops trust add PUBKEY --name {name} {option}"
            " with the key's other scope options (vmbusops trust list shows them)"
        )

    # --- editing ----------------------------------------------------------------------------

    def with_key(self, key: TrustedKey, scope: Scope) -> TrustPolicy:
        """Add ``key``, joining an existing scope with the same rights or creating one."""
        keys = dict(self.keys)
        keys[key.keyid] = key
        scopes = list(self.scopes)
        for i, existing in enumerate(scopes):
            if existing.same_rights(scope):
                if key.keyid not in existing.keys:
                    scopes[i] = replace(existing, keys=(*existing.keys, key.keyid))
                return TrustPolicy(keys=keys, scopes=tuple(scopes))
        scopes.append(replace(scope, keys=(key.keyid,)))
        return TrustPolicy(keys=keys, scopes=tuple(scopes))

    def has_scope(self, keyid: str, scope: Scope) -> bool:
        """Whether ``keyid`` is already in a scope with ``scope``'s rights."""
        return any(keyid in s.keys and s.same_rights(scope) for s in self.scopes)

    def renamed(self, keyid: str, name: str) -> TrustPolicy:
        """The same policy, with the trusted key ``keyid`` under another name."""
        keys = dict(self.keys)
        keys[keyid] = replace(keys[keyid], name=name)
        return TrustPolicy(keys=keys, scopes=self.scopes)

    def without_key(self, keyid: str) -> TrustPolicy:
        keys = {k: v for k, v in self.keys.items() if k != keyid}
        scopes = []
        for s in self.scopes:
            remaining = tuple(k for k in s.keys if k != keyid)
            if remaining:
                scopes.append(replace(s, keys=remaining))
        return TrustPolicy(keys=keys, scopes=tuple(scopes))

    def resolve_keyid(self, prefix: str) -> str:
        """The key id a key's name, or 8 or more leading hex digits of its id, stand for."""
        named = [k.keyid for k in self.keys.values() if k.name == prefix]
        if len(named) == 1:
            return named[0]
        matches = [k for k in self.keys if k.startswith(prefix.lower())] if len(prefix) >= 8 else []
        if len(matches) != 1:
            raise TrustPolicyError(
                f"{prefix!r} matches {len(matches)} trusted keys",
                hint="give a key's name, or 8 or more leading hex digits of its id (see: vmbusops trust list)",
            )
        return matches[0]

    # --- text -------------------------------------------------------------------------------

    def to_toml(self) -> str:
        doc: dict[str, Any] = {
            "keys": [
                {"keyid": k.keyid, "name": k.name, "public": base64.b64encode(k.public.raw).decode("ascii")}
                for k in self.keys.values()
            ],
            "scopes": [],
        }
        for s in self.scopes:
            item: dict[str, Any] = {
                "keys": list(s.keys),
                "vms": list(s.vms),
                "credentials": list(s.credentials),
                "steps": sorted(k.value for k in s.steps),
                "threshold": s.threshold,
            }
            if s.until is not None:
                item["until"] = s.until
            if s.enable_guest_services:
                item["enable_guest_services"] = True
            if s.checkpoints:
                item["checkpoints"] = True
            doc["scopes"].append(item)
        header = "# vmbusops trust policy: keys that may sign job bundles, and what each may do.\n"
        return header + tomli_w.dumps(doc)


def _bad(where: str, what: str) -> TrustPolicyError:
    return TrustPolicyError(
        f"trust policy: {where} {what}", hint="fix trust.toml, or rebuild it with vmbusops trust"
    )


def _strings(item: dict[str, Any], key: str, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = item.pop(key, None)
    if value is None:
        return default
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _bad(f"{where}.{key}", "must be a non-empty list of strings")
    return tuple(value)


def parse_trust_policy(text: str, *, source: str = "trust.toml") -> TrustPolicy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TrustPolicyError(f"trust policy {source} is not valid TOML: {exc}") from exc
    extra = set(doc) - {"keys", "scopes"}
    if extra:
        raise _bad("top level", f"has unknown field(s) {', '.join(sorted(extra))}")
    keys: dict[str, TrustedKey] = {}
    for i, raw in enumerate(doc.get("keys", [])):
        where = f"keys[{i}]"
        if not isinstance(raw, dict):
            raise _bad(where, "must be a table")
        item = dict(raw)
        keyid, name, public = item.pop("keyid", None), item.pop("name", None), item.pop("public", None)
        if item:
            raise _bad(where, f"has unknown field(s) {', '.join(sorted(item))}")
        if not (isinstance(keyid, str) and isinstance(name, str) and isinstance(public, str)):
            raise _bad(where, "needs string fields keyid, name and public")
        try:
            key = PublicKey(base64.b64decode(public, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"{where}.public", "is not a base64 Ed25519 public key") from exc
        if key.keyid != keyid:
            raise _bad(f"{where}.keyid", f"does not match its public key (that key's id is {key.keyid})")
        keys[keyid] = TrustedKey(name=name, public=key)
    scopes: list[Scope] = []
    for i, raw in enumerate(doc.get("scopes", [])):
        where = f"scopes[{i}]"
        if not isinstance(raw, dict):
            raise _bad(where, "must be a table")
        item = dict(raw)
        members = _strings(item, "keys", where, ())
        for k in members:
            if k not in keys:
                raise _bad(f"{where}.keys", f"names {k[:16]}, which is not among [[keys]]")
        vms = _strings(item, "vms", where, ("*",))
        credentials = _strings(item, "credentials", where, ("*",))
        step_names = _strings(item, "steps", where, tuple(k.value for k in StepKind))
        try:
            steps = frozenset(StepKind(s) for s in step_names)
        except ValueError as exc:
            raise _bad(f"{where}.steps", f"has an unknown step kind ({exc})") from None
        until = item.pop("until", None)
        if until is not None:
            if not isinstance(until, datetime):
                raise _bad(f"{where}.until", "must be a TOML date-time such as 2027-01-01T00:00:00Z")
            until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
        threshold = item.pop("threshold", 1)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= 32:
            raise _bad(f"{where}.threshold", "must be an integer from 1 to 32")
        enable_gsi = item.pop("enable_guest_services", False)
        if not isinstance(enable_gsi, bool):
            raise _bad(f"{where}.enable_guest_services", "must be true or false")
        checkpoints = item.pop("checkpoints", False)
        if not isinstance(checkpoints, bool):
            raise _bad(f"{where}.checkpoints", "must be true or false")
        if item:
            raise _bad(where, f"has unknown field(s) {', '.join(sorted(item))}")
        if not members:
            raise _bad(f"{where}.keys", "must name at least one key")
        scopes.append(
            Scope(
                keys=members,
                vms=vms,
                credentials=credentials,
                steps=steps,
                until=until,
                threshold=threshold,
                enable_guest_services=enable_gsi,
                checkpoints=checkpoints,
            )
        )
    return TrustPolicy(keys=keys, scopes=tuple(scopes))


#: The last policy parsed from each path, with the text it was parsed from.
_parsed: dict[str, tuple[str, TrustPolicy]] = {}


def load_trust_policy(path: Path) -> TrustPolicy:
    """The policy the file holds now. The file is read on every call; when its text is the text
    last parsed from that path, that parse is returned (a fleet agent verifies every run's bundle)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrustPolicyError(
            f"no trust policy at {path}",
            hint="trust a signer first: vmbusops trust add NAME.pub (or pass --trust FILE)",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustPolicyError(f"cannot read trust policy {path}: {exc}") from exc
    known = _parsed.get(str(path))
    if known is not None and known[0] == text:
        return known[1]
    policy = parse_trust_policy(text, source=str(path))
    _parsed[str(path)] = (text, policy)
    return policy


def save_trust_policy(policy: TrustPolicy, path: Path) -> None:
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    private_file(tmp).write_text(policy.to_toml(), encoding="utf-8")  # 0600 before a byte is in it
    tmp.replace(path)
