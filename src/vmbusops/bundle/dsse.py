"""The DSSE signing envelope, on bytes.

DSSE (the in-toto / sigstore envelope) signs ``PAE(payloadType, payload)``::

    "DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload

so the signature covers the payload type as well as the payload bytes, and the verifier never
parses the payload before the signature holds. The envelope is JSON::

    {"payloadType": "application/vnd.vmbusops.manifest.v1+json",
     "payload": "<base64 manifest>",
     "signatures": [{"keyid": "<hex sha256 of raw public key>", "sig": "<base64 Ed25519>"}]}

Parsing is strict: exactly these fields, no duplicate JSON keys, canonical base64, one signature
per key id. Which keys count, and how many are needed, is the trust policy's business
(:mod:`vmbusops.bundle.policy`); :func:`verified_signers` only answers which known keys signed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vmbusops.bundle.crypto import PrivateKey, PublicKey
from vmbusops.bundle.errors import BadSignatureError, EnvelopeError, ManifestError

PAYLOAD_TYPE = "application/vnd.vmbusops.manifest.v1+json"
MAX_SIGNATURES = 32
_KEYID = re.compile(r"[0-9a-f]{64}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a signature actually signs."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = ()

    def signed_bytes(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def with_signature(self, key: PrivateKey) -> Envelope:
        """This envelope plus ``key``'s signature (replacing an older one by the same key)."""
        sig = Signature(keyid=key.keyid, sig=key.sign(self.signed_bytes()))
        others = tuple(s for s in self.signatures if s.keyid != sig.keyid)
        return replace(self, signatures=(*others, sig))

    def to_json(self) -> bytes:
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures
            ],
        }
        return json.dumps(doc, indent=1).encode("utf-8") + b"\n"


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"repeated JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(
    data: bytes, *, what: str, error: type[EnvelopeError] | type[ManifestError] = EnvelopeError
) -> Any:
    """JSON that refuses duplicate keys, NaN/Infinity, invalid UTF-8 and runaway nesting."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except _DuplicateKeyError as exc:
        raise error(f"the {what} is not strict JSON: {exc}", hint="rebuild the bundle") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(
            f"the {what} is not valid JSON ({type(exc).__name__})", hint="rebuild the bundle"
        ) from exc


def _b64(value: object, *, field: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"envelope field {field} must be a base64 string", hint="rebuild the bundle")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise EnvelopeError(f"envelope field {field} is not valid base64", hint="rebuild the bundle") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise EnvelopeError(f"envelope field {field} is not canonical base64", hint="rebuild the bundle")
    return raw


def parse_envelope(data: bytes) -> Envelope:
    """Parse the envelope member's bytes; signatures are not checked here."""
    doc = strict_json(data, what="envelope")
    if not isinstance(doc, dict):
        raise EnvelopeError("the envelope is not a JSON object", hint="rebuild the bundle")
    extra = set(doc) - {"payloadType", "payload", "signatures"}
    if extra:
        raise EnvelopeError(f"the envelope has unknown fields: {', '.join(sorted(extra))}")
    payload_type = doc.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise EnvelopeError(
            f"the envelope's payloadType is {payload_type!r}, not {PAYLOAD_TYPE!r}",
            hint="this file is not a vmbusops job bundle, or was built by an incompatible version",
        )
    payload = _b64(doc.get("payload"), field="payload")
    raw_sigs = doc.get("signatures")
    if not isinstance(raw_sigs, list):
        raise EnvelopeError("envelope field signatures must be a list", hint="rebuild the bundle")
    if len(raw_sigs) > MAX_SIGNATURES:
        raise EnvelopeError(f"the envelope carries {len(raw_sigs)} signatures; at most {MAX_SIGNATURES}")
    sigs: list[Signature] = []
    for i, item in enumerate(raw_sigs):
        if not isinstance(item, dict) or set(item) != {"keyid", "sig"}:
            raise EnvelopeError(f"envelope signature {i} must have exactly the fields keyid and sig")
        keyid = item["keyid"]
        if not isinstance(keyid, str) or not _KEYID.fullmatch(keyid):
            raise EnvelopeError(f"envelope signature {i} has a malformed keyid (want 64 hex digits)")
        if any(s.keyid == keyid for s in sigs):
            raise EnvelopeError(f"key {keyid[:16]} signed the envelope twice", keyid=keyid)
        sigs.append(Signature(keyid=keyid, sig=_b64(item["sig"], field=f"signatures[{i}].sig")))
    return Envelope(payload_type=payload_type, payload=payload, signatures=tuple(sigs))


def verified_signers(envelope: Envelope, known: Mapping[str, PublicKey]) -> frozenset[str]:
    """Key ids in ``known`` whose signatures verify. Signatures by unknown keys are ignored;
    a known key's signature that does not verify rejects the bundle (it was altered)."""
    data = envelope.signed_bytes()
    good: set[str] = set()
    for sig in envelope.signatures:
        key = known.get(sig.keyid)
        if key is None:
            continue
        if not key.verify(sig.sig, data):
            raise BadSignatureError(
                f"the signature by trusted key {sig.keyid[:16]} does not match the manifest:"
                " the manifest or the signature was altered after signing",
                hint="get a fresh copy of the bundle from its author; do not run this one",
                keyid=sig.keyid,
            )
        good.add(sig.keyid)
    return frozenset(good)
