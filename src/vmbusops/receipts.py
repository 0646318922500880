"""Signed execution receipts: what the host says it did in a VM, signed with the host's own key.

Theory of operation
-------------------
Each agent home has its own Ed25519 *host key* (:func:`host_key`): ``$VMBUSOPS_HOME/host/
receipt-signing.key``, made on first use (owner-only, 0600, PEM PKCS#8 without a passphrase, as
:mod:`vmbusops.bundle.crypto` writes keys), its key id the SHA-256 of its raw public key like every
other key. ``vmbusops receipt host-key`` prints its public half, which a provider publishes to its
tenants.

When a run ends (any terminal state) and its end is committed, the engine calls the hook the agent
and ``vmbusops run`` install (:func:`receipt_hook`), which writes the run's *receipt*: a DSSE
envelope (:mod:`vmbusops.bundle.dsse`) of type :data:`PAYLOAD_TYPE`, signed by the host key, whose
payload is a JSON object (:func:`receipt_payload`):

* ``receipt`` (1), ``issued_at``;
* ``host``: the Hyper-V host the job ran on (its name in the journal: ``local``, ``sim`` or a
  remote host's), the machine that ran the engine (its network name) and the host key's id;
* ``bundle``: name, version, id, ``digest`` (``{"sha256": ...}`` of the signed envelope the job was
  accepted with, byte for byte as the journal keeps it; null for a job made without one) and
  ``signers``: the key ids of the signatures that envelope carries (acceptance verified every one
  by a key its trust policy knew and demanded the threshold; a tenant holding the bundle checks
  the digest and its own signature);
* ``vm`` (name, and Hyper-V's id when the host could be asked), ``job``, ``run``;
* ``outcome`` (the run's state), ``code`` (its failure code, or null), ``started_at``, ``finished_at``;
* ``steps``: each step's ``name``, ``kind``, ``result`` (its state), ``exit_code``, ``started_at``,
  ``finished_at``;
* ``transcript``: ``sha256`` and ``records`` of the run's transcript (below);
* ``checkpoints``: the checkpoints of the run's guarded spans (:mod:`vmbusops.engine.guard`), an
  empty list where none were taken: each one's ``name``, ``type`` (production or standard),
  ``outcome`` (``kept``: the change stayed; ``rolled-back``; ``failed``: a restore failed and it
  is kept; ``refused``), the last ``phase`` reached, and when it was ``taken_at``,
  ``restored_at`` and ``removed_at`` (null for what did not happen).

Times are ISO 8601 UTC (:func:`vmbusops.times.iso_time`). No error text, no script, no
credential: nothing in a receipt can carry a secret.

The *transcript* of a run is defined as: the run's records in ``seq`` order, each as the JSON
object ``vmbusops logs --json`` prints for it and the API sends (``{"vm", "event", "stream",
"seq", "time", "step", ...the stored content}``, spliced from the stored JSON text by
:func:`vmbusops.engine.journal_rows.spliced_record`), each followed by one ``"\\n"``, in UTF-8.
``vmbusops receipt transcript JOB --vm VM`` and ``GET /v1/jobs/{id}/runs/{vm}/transcript`` give
exactly those bytes; its SHA-256 is the receipt's ``transcript.sha256``.

Receipts live in the journal's ``receipts`` table, one per run, written once (the first wins).
If the process dies between the run's end and its receipt, or the hook could not write it, the
receipt is written when it is first asked for (``receipt show``/``export``, the API) from what the
journal holds, then without the VM's Hyper-V id (no host is asked). A run whose records retention
removed gets no new receipt: its transcript is gone.

:func:`verify_receipt` is what ``vmbusops receipt verify`` does on the tenant's side: the envelope's
form, the host key's signature over it, and, given the transcript's bytes, their digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from vmbusops.bundle.crypto import PrivateKey, PublicKey
from vmbusops.bundle.dsse import Envelope, Signature, pae, parse_envelope, strict_json
from vmbusops.bundle.errors import EnvelopeError, KeyFileError
from vmbusops.engine.journal import READ_PAGE, JobView, Journal, RunView, StepView
from vmbusops.engine.journal_rows import spliced_record
from vmbusops.errors import BundleError, ConfigError, JobStateError, NoSuchJobError, VmbusOpsError
from vmbusops.home import home_path, private_dir
from vmbusops.times import iso_time, iso_time_or_none

PAYLOAD_TYPE: Final = "application/vnd.vmbusops.receipt+json; version=1"
RECEIPT_VERSION: Final = 1
MAX_RECEIPT_BYTES: Final = 1 << 20
#: How long a run's end waits for the host to name the VM's Hyper-V id for its receipt.
VM_ID_TIMEOUT: Final = 10.0

log = logging.getLogger("vmbusops.receipts")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ReceiptRejected(BundleError):
    """A receipt that does not verify (exit code 4, as a rejected bundle): not signed by the host
    key given, altered after signing, or its transcript does not match."""


# ---------------------------------------------------------------- the host key
def host_key_path() -> Path:
    return home_path("host", "receipt-signing.key")


def host_key(path: Path | None = None) -> PrivateKey:
    """The host's receipt-signing key, made (0600, exclusively) the first time it is asked for."""
    path = path or host_key_path()
    try:
        return PrivateKey.from_pem(path.read_bytes(), passphrase=None, source=str(path))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KeyFileError(f"cannot read the host key {path}: {exc.strerror}") from exc
    private_dir(path.parent)
    key = PrivateKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    except FileExistsError:  # made meanwhile by another process of this home: use that one
        return host_key(path)
    except OSError as exc:
        raise KeyFileError(f"cannot write the host key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem(None))
        f.flush()
        os.fsync(f.fileno())
    return key


# ---------------------------------------------------------------- the transcript
def transcript_chunks(journal: Journal, run: RunView) -> Iterator[bytes]:
    """The run's transcript (see the module doc), a page of records at a time."""
    vm_json = _dumps(run.vm)
    steps: dict[str | None, str] = {}
    after = 0
    while True:
        rows = journal.stored_records(run.job_id, run_id=run.id, after=after, limit=READ_PAGE)
        lines: list[str] = []
        for r in rows:
            step = steps.get(r[4])
            if step is None:
                step = steps[r[4]] = _dumps(r[4])
            lines.append(spliced_record(vm_json, step, r) + "\n")
        if rows:
            yield "".join(lines).encode("utf-8")
            after = rows[-1][1]
        if len(rows) < READ_PAGE:
            return


def transcript_of(journal: Journal, run: RunView) -> Iterator[bytes]:
    """:func:`transcript_chunks`, refused (:class:`JobStateError`) once retention removed the records."""
    if journal.job(run.job_id).pruned:
        raise JobStateError(
            f"job {run.job_id}'s records were removed by retention: the transcript of {run.vm} is gone",
            hint=f"its receipt still names the transcript's digest: vmbusops receipt show {run.job_id}",
        )
    return transcript_chunks(journal, run)


def transcript_digest(chunks: Iterator[bytes]) -> tuple[str, int]:
    """(SHA-256 hex, number of records) of a transcript."""
    digest = hashlib.sha256()
    lines = 0
    for chunk in chunks:
        digest.update(chunk)
        lines += chunk.count(b"\n")
    return digest.hexdigest(), lines


# ---------------------------------------------------------------- making receipts
def find_run(journal: Journal, job_id: int, vm: str | None) -> list[RunView]:
    """The job's run on ``vm`` (any case), or all its runs when ``vm`` is None."""
    runs = journal.runs(job_id)
    if vm is None:
        return runs
    found = [r for r in runs if r.vm.casefold() == vm.casefold()]
    if not found:
        raise NoSuchJobError(
            f"job {job_id} has no run on {vm}", hint=f"see its runs with: vmbusops jobs show {job_id}"
        )
    return found


def receipt_payload(
    journal: Journal, run: RunView, *, host_keyid: str, vm_id: str | None, job: JobView | None = None
) -> dict[str, Any]:
    """The receipt of a finished run, from what the journal holds (see the module doc); ``job``
    is the run's job as already read, if it was."""
    job = job or journal.job(run.job_id)
    envelope = job.envelope.encode("utf-8") if job.envelope is not None else None
    signers: list[str] = []
    if envelope is not None:
        try:
            signers = [s.keyid for s in parse_envelope(envelope).signatures]
        except BundleError:
            signers = []
    sha, count = transcript_digest(transcript_chunks(journal, run))
    return {
        "receipt": RECEIPT_VERSION,
        "issued_at": iso_time(time.time()),
        "host": {"name": job.host, "machine": platform.node(), "key_id": host_keyid},
        "bundle": {
            "name": job.bundle_name,
            "version": job.bundle_version,
            "id": job.bundle_id,
            "digest": {"sha256": hashlib.sha256(envelope).hexdigest()} if envelope is not None else None,
            "signers": signers,
        },
        "vm": {"name": run.vm, "id": vm_id},
        "job": run.job_id,
        "run": run.id,
        "outcome": run.state.value,
        "code": run.code,
        "started_at": iso_time_or_none(run.started_at),
        "finished_at": iso_time_or_none(run.finished_at),
        "steps": [_step_json(s) for s in journal.steps(run.id)],
        "transcript": {"sha256": sha, "records": count},
        "checkpoints": [c.to_json() for c in journal.checkpoints(run.id)],
    }


def _step_json(s: StepView) -> dict[str, Any]:
    return {
        "name": s.name, "kind": s.kind, "result": s.state.value, "exit_code": s.exit_code,
        "started_at": iso_time_or_none(s.started_at), "finished_at": iso_time_or_none(s.finished_at),
    }  # fmt: skip


def sign_receipt(payload: dict[str, Any], key: PrivateKey) -> bytes:
    """The receipt's DSSE envelope (JSON), signed by ``key``."""
    body = json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8")
    return Envelope(payload_type=PAYLOAD_TYPE, payload=body).with_signature(key).to_json()


def write_receipt(journal: Journal, run: RunView, key: PrivateKey, *, vm_id: str | None = None) -> bytes:
    """The run's receipt: the stored one, or one made and stored now (the first stored wins)."""
    stored = journal.receipt(run.id)
    if stored is not None:
        return stored.encode("utf-8")
    if not run.stored_state.terminal:
        raise JobStateError(
            f"the run of job {run.job_id} on {run.vm} is {run.state.value}: a receipt is written when it ends",
            hint=f"wait for it: vmbusops logs -f {run.job_id}",
        )
    job = journal.job(run.job_id)
    if job.pruned:
        raise JobStateError(
            f"job {run.job_id}'s records were pruned before its receipt on {run.vm} was written",
            hint="a receipt needs the run's whole transcript; none can be made now",
        )
    envelope = sign_receipt(receipt_payload(journal, run, host_keyid=key.keyid, vm_id=vm_id, job=job), key)
    return journal.store_receipt(run.id, run.job_id, envelope.decode("utf-8"), time.time()).encode("utf-8")


def receipts_of(journal: Journal, job_id: int, vm: str | None, key: PrivateKey | None = None) -> list[bytes]:
    """The receipts of the job's finished runs (one VM's with ``vm``), made if missing."""
    runs = find_run(journal, job_id, vm)
    if vm is None:
        runs = [r for r in runs if r.stored_state.terminal]
    signer = key or host_key()
    return [write_receipt(journal, r, signer) for r in runs]


def receipt_hook(journal: Journal, *, key: PrivateKey | None = None) -> Callable[[Any, int, int, str], Awaitable[None]]:
    """The engine's ``after_run``: write a finished run's receipt, asking the host for the VM's id.

    A receipt that cannot be written now (an unreadable key, a journal error) is logged; it is
    made when first asked for."""
    signer = key or host_key()

    async def after_run(host: Any, job_id: int, run_id: int, vm: str) -> None:
        vm_id: str | None = None
        with trio.move_on_after(VM_ID_TIMEOUT):
            try:
                vm_id = next((v.id or None for v in await host.list_vms() if v.name.casefold() == vm.casefold()), None)
            except Exception:  # the id is a nicety: no way of failing to get it may touch the run
                vm_id = None

        def write() -> None:
            (run,) = journal.runs(job_id, run_id)  # this run only: the job's other runs are not read
            write_receipt(journal, run, signer, vm_id=vm_id)

        try:
            await trio.to_thread.run_sync(write)
        except VmbusOpsError as exc:
            log.warning("receipt not written", extra={"event": "receipt-failed", "job": job_id, "vm": vm, "why": str(exc)})

    return after_run


# ---------------------------------------------------------------- verifying
@dataclass(frozen=True, slots=True)
class Verified:
    payload: dict[str, Any]
    keyid: str
    #: The transcript's record count, when a transcript was checked.
    transcript_records: int | None = None


def _refuse(message: str, hint: str = "do not trust this receipt; ask the provider for a fresh copy") -> ReceiptRejected:
    return ReceiptRejected(message, hint=hint)


def parse_receipt(data: bytes) -> Envelope:
    """The receipt's envelope, strictly parsed (no signature checked)."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise _refuse(f"the receipt is {len(data)} bytes; a receipt is at most {MAX_RECEIPT_BYTES}")
    try:
        doc = strict_json(data, what="receipt")
    except EnvelopeError as exc:
        raise _refuse(exc.message) from None
    if not isinstance(doc, dict) or set(doc) != {"payloadType", "payload", "signatures"}:
        raise _refuse("the receipt is not a DSSE envelope (payloadType, payload, signatures)")
    if doc["payloadType"] != PAYLOAD_TYPE:
        raise _refuse(f"the envelope's payloadType is {doc['payloadType']!r}, not a vmbusops receipt's")
    sigs = doc["signatures"]
    if not isinstance(sigs, list) or not all(isinstance(s, dict) and set(s) == {"keyid", "sig"} for s in sigs):
        raise _refuse("the receipt's signatures must be a list of {keyid, sig}")
    try:
        return Envelope(
            payload_type=PAYLOAD_TYPE,
            payload=_b64(doc["payload"]),
            signatures=tuple(Signature(keyid=str(s["keyid"]), sig=_b64(s["sig"])) for s in sigs),
        )
    except (binascii.Error, TypeError, ValueError):
        raise _refuse("the receipt's payload or a signature is not canonical base64") from None


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not a string")
    raw = base64.b64decode(value.encode("ascii"), validate=True)
    if base64.b64encode(raw).decode("ascii") != value:
        raise ValueError("not canonical")
    return raw


def verify_receipt(data: bytes, host: PublicKey, transcript: bytes | None = None) -> Verified:
    """Check a receipt against the host's published key and, given it, the run's transcript."""
    envelope = parse_receipt(data)
    mine = [s for s in envelope.signatures if s.keyid == host.keyid]
    if not mine:
        raise _refuse(
            f"the receipt is not signed by host key {host.keyid[:16]}",
            hint="check that --host-key is the key the provider published for the host that ran the job",
        )
    if not host.verify(mine[0].sig, pae(envelope.payload_type, envelope.payload)):
        raise _refuse(
            f"the signature by host key {host.keyid[:16]} does not match the receipt:"
            " the receipt or its signature was altered after signing"
        )
    try:
        payload = json.loads(envelope.payload)
    except (ValueError, UnicodeDecodeError):
        raise _refuse("the signed payload is not JSON") from None
    if not isinstance(payload, dict) or payload.get("receipt") != RECEIPT_VERSION:
        raise _refuse(f"the signed payload is not a version {RECEIPT_VERSION} receipt")
    if payload.get("host", {}).get("key_id") != host.keyid:
        raise _refuse("the receipt names another host key than the one that signed it")
    if transcript is None:
        return Verified(payload, host.keyid)
    want = payload.get("transcript", {})
    got = hashlib.sha256(transcript).hexdigest()
    if got != want.get("sha256"):
        count = transcript.count(b"\n")
        raise _refuse(
            f"the transcript does not match the receipt: sha256 {got[:16]}, receipt says"
            f" {str(want.get('sha256'))[:16]} ({count} records given, {want.get('records')} signed)",
            hint="get the run's transcript again (vmbusops receipt transcript JOB --vm VM), unchanged",
        )
    return Verified(payload, host.keyid, transcript.count(b"\n"))


def load_receipt_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(MAX_RECEIPT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def decode_payload(envelope_json: bytes) -> dict[str, Any]:
    """A stored receipt's payload (the host's own: read back after the signature was checked)."""
    payload: dict[str, Any] = json.loads(parse_receipt(envelope_json).payload)
    return payload


__all__ = [
    "PAYLOAD_TYPE",
    "RECEIPT_VERSION",
    "ReceiptRejected",
    "Verified",
    "decode_payload",
    "find_run",
    "host_key",
    "host_key_path",
    "load_receipt_file",
    "receipt_hook",
    "receipt_payload",
    "receipts_of",
    "sign_receipt",
    "transcript_chunks",
    "transcript_digest",
    "transcript_of",
    "verify_receipt",
    "write_receipt",
]
