"""Verifying and accepting a bundle file.

Theory of operation. One pass over the file, front to back, stopping at the first failure:

1. read only the first member, which must be ``envelope.json`` and no larger than
   ``Limits.max_envelope_bytes``; parse it as DSSE;
2. verify the signatures of keys the trust policy knows; at least one, and some scope's threshold;
3. only now parse the manifest (strict schema);
4. freshness: not expired, not issued in the future (both with ``Limits.clock_skew``), version
   not lower than the last accepted for the name, id never accepted (nor held) before;
5. one trust scope must cover the targets, the credential and every step kind, with enough signers;
6. stream every remaining member through SHA-256 (and, when accepting, into a fresh owner-only
   directory), refusing anything not exactly as the manifest lists it.

:func:`verify_bundle` performs all of it and writes nothing anywhere. :func:`accept_bundle` also
extracts and, only when everything held, *reserves* the id and version in the replay store for
the calling process; on any failure it removes what it extracted, so a rejected bundle leaves
nothing behind. The caller then creates the bundle's job (or schedule) and confirms the
reservation, or releases it (:func:`release_accepted`) when it could not: see
:mod:`vmbusops.bundle.replay` for why acceptance and the job are one fact.

:func:`reverify` is the same judgement, made again later, on what a job kept of its bundle (the
signed envelope, the manifest, the extracted files): signatures against today's trust policy,
scope, expiry, each file's SHA-256; it neither reads nor writes the replay store. Resuming a job
and each tick of a schedule call it, so a key removed from the trust policy since stops them.

Both block on file I/O; the engine calls them from a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from vmbusops.bundle.archive import TarReader, check_member
from vmbusops.bundle.dsse import Envelope, parse_envelope, verified_signers
from vmbusops.bundle.errors import (
    ArchiveError,
    DigestMismatchError,
    DuplicateMemberError,
    EnvelopeError,
    EnvelopeMissingError,
    EnvelopeTooLargeError,
    ExpiredBundleError,
    LimitExceededError,
    MemberSizeError,
    MissingMemberError,
    NotYetValidError,
    UnexpectedMemberError,
    _RejectedBundle,
)
from vmbusops.bundle.manifest import ENVELOPE_MEMBER, FileEntry, Manifest, format_time, parse_manifest
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.errors import ConfigError, JournalError
from vmbusops.home import home_dir, private_dir
from vmbusops.owner import Owner, current_owner

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # Windows has neither O_NOFOLLOW nor O_CLOEXEC


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_envelope_bytes: int = 1 << 20
    max_members: int = 10_000
    max_total_bytes: int = 64 << 30
    max_trailing_bytes: int = 1 << 20
    clock_skew: timedelta = timedelta(minutes=5)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedBundle:
    """A bundle that passed every check. ``signers`` are the trusted keys that signed it;
    ``scope`` is the trust scope that allowed it."""

    source: str
    manifest: Manifest
    signers: tuple[TrustedKey, ...]
    scope: Scope
    #: The signed envelope as verified: a job keeps it so that resuming can verify it again.
    envelope: Envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedBundle(VerifiedBundle):
    """A verified bundle, extracted into ``directory`` (owner-only) and reserved in the replay
    store for ``holder``, which confirms it once the bundle's job or schedule exists, or gives it
    back with :func:`release_accepted`. The caller owns ``directory`` and removes it when the job
    is done."""

    directory: Path
    holder: Owner

    def local_path(self, bundle_path: str) -> Path:
        """Where a manifest path (a file, or a DSC module folder) was extracted."""
        return self.directory.joinpath(*bundle_path.split("/"))


# --- the steps, each on values --------------------------------------------------------------------


def read_envelope(reader: TarReader, limits: Limits) -> Envelope:
    header = reader.next_member()
    if header is None or header.name != ENVELOPE_MEMBER:
        found = "no members" if header is None else f"{header.name!r}"
        raise EnvelopeMissingError(
            f"the first member must be {ENVELOPE_MEMBER}, found {found}",
            hint="give a .vmb file written by `vmbusops bundle build` and signed with `vmbusops bundle sign`",
        )
    check_member(header)
    if header.size > limits.max_envelope_bytes:
        raise EnvelopeTooLargeError(
            f"the envelope is {header.size} bytes; the limit is {limits.max_envelope_bytes}",
            hint="do not run this bundle; a real envelope is a few kilobytes",
            member=ENVELOPE_MEMBER,
        )
    return parse_envelope(reader.read_member(limits.max_envelope_bytes))


def check_freshness(
    manifest: Manifest, *, reference_time: datetime, replay: ReplayStore, skew: timedelta
) -> None:
    if manifest.is_expired(reference_time, skew=skew):
        raise ExpiredBundleError(
            f"{manifest.name} v{manifest.version} expired at {format_time(manifest.expires)}"
            f" (now {format_time(reference_time)})",
            hint="ask its author for a freshly built and signed bundle",
        )
    if manifest.is_issued_in_future(reference_time, skew=skew):
        raise NotYetValidError(
            f"{manifest.name} v{manifest.version} claims to be issued at {format_time(manifest.issued)},"
            f" in the future (now {format_time(reference_time)})",
            hint="check this host's clock and the author's",
        )
    replay.check(bundle_id=manifest.id, name=manifest.name, version=manifest.version)


def check_limits(manifest: Manifest, limits: Limits) -> None:
    if len(manifest.files) + 1 > limits.max_members:
        raise LimitExceededError(
            f"the manifest lists {len(manifest.files)} files; the limit is {limits.max_members - 1}",
            hint="split the job into smaller bundles",
            member="(manifest)",
        )
    if manifest.total_size > limits.max_total_bytes:
        raise LimitExceededError(
            f"the manifest's files total {manifest.total_size} bytes; the limit is {limits.max_total_bytes}",
            hint="split the job into smaller bundles",
            member="(manifest)",
        )


def _open_output(root: Path, entry: FileEntry) -> BinaryIO:
    parts = entry.path.split("/")
    parent = root.joinpath(*parts[:-1])
    private_dir(parent)
    fd = os.open(
        parent / parts[-1],
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY | _O_CLOEXEC,
        0o600,
    )
    return os.fdopen(fd, "wb")


def stream_members(reader: TarReader, manifest: Manifest, limits: Limits, dest: Path | None) -> None:
    """Check (and, with ``dest``, extract) every member after the envelope against the manifest."""
    expected = {f.path.casefold(): f for f in manifest.files}
    seen: set[str] = set()
    count = 1
    while (header := reader.next_member()) is not None:
        count += 1
        name = header.name
        if count > limits.max_members:
            raise LimitExceededError(
                f"the archive has more than {limits.max_members} members",
                hint="do not run this bundle",
                member=name,
            )
        folded = name.casefold()
        check_member(header)
        if folded in seen or name == ENVELOPE_MEMBER:
            raise DuplicateMemberError(
                f"member {name!r} appears more than once (names compare case-insensitively)",
                hint="do not run this bundle; an archive with duplicates can hide a second version of a file",
                member=name,
            )
        seen.add(folded)
        entry = expected.get(folded)
        if entry is None or entry.path != name:
            raise UnexpectedMemberError(
                f"member {name!r} is not listed in the signed manifest",
                hint="do not run this bundle; something was added after it was signed",
                member=name,
            )
        if header.size != entry.size:
            relation = "larger" if header.size > entry.size else "smaller"
            raise MemberSizeError(
                f"member {name!r} is {header.size} bytes, {relation} than the {entry.size} the manifest says",
                hint="do not run this bundle; it was altered after signing",
                member=name,
            )
        digest = hashlib.sha256()
        if dest is None:
            for chunk in reader.iter_data():
                digest.update(chunk)
        else:
            with _open_output(dest, entry) as out:
                for chunk in reader.iter_data():
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != entry.sha256:
            raise DigestMismatchError(
                f"member {name!r} does not match its SHA-256 in the signed manifest",
                hint="do not run this bundle; it was altered after signing (or damaged in transit)",
                member=name,
            )
    missing = [f.path for f in manifest.files if f.path.casefold() not in seen]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MissingMemberError(
            f"the archive lacks {', '.join(repr(m) for m in missing[:3])}{more}, listed in the manifest",
            hint="copy the whole bundle again; if it persists, ask its author to rebuild it",
            member=missing[0],
        )
    reader.check_trailer(limits.max_trailing_bytes)


# --- the file-level entry points -----------------------------------------------------------------


@contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    label = path.name
    try:
        stream = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise ConfigError(f"no bundle file {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot open bundle file {path}: {exc.strerror}") from exc
    try:
        with stream:
            yield stream
    except _RejectedBundle as exc:
        if exc.bundle is None:
            exc.bundle = label
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Our store is full, not the bundle at fault: exit code 3, as for a full journal.
            raise JournalError(
                f"bundle {label} cannot be extracted under $VMBUSOPS_HOME: {exc.strerror}",
                hint=f"free space under {home_dir(create=False)}, then run it again (the bundle was not rejected)",
            ) from exc
        raise ArchiveError(
            f"I/O error while reading or extracting: {exc.strerror}",
            hint="check the file and the free space under $VMBUSOPS_HOME, then try again",
            bundle=label,
        ) from exc


def verify_stream(
    stream: BinaryIO,
    *,
    policy: TrustPolicy,
    replay: ReplayStore,
    reference_time: datetime,
    limits: Limits = DEFAULT_LIMITS,
    dest: Path | None = None,
    source: str = "<stream>",
) -> VerifiedBundle:
    """The whole check on any binary stream (a file, a socket reader, bytes in memory)."""
    reader = TarReader(stream)
    envelope = read_envelope(reader, limits)
    signers = verified_signers(envelope, policy.public_keys())
    policy.check_signers(signers, signed_by=[s.keyid for s in envelope.signatures])
    manifest = parse_manifest(envelope.payload)
    check_freshness(manifest, reference_time=reference_time, replay=replay, skew=limits.clock_skew)
    scope = policy.authorize(manifest, signers, reference_time=reference_time)
    check_limits(manifest, limits)
    stream_members(reader, manifest, limits, dest)
    return VerifiedBundle(
        source=source,
        manifest=manifest,
        signers=tuple(policy.keys[k] for k in sorted(signers)),
        scope=scope,
        envelope=envelope,
    )


def _verify(
    path: Path,
    *,
    policy: TrustPolicy,
    replay: ReplayStore,
    now: datetime | None,
    limits: Limits,
    dest: Path | None,
) -> VerifiedBundle:
    reference_time = now if now is not None else datetime.now(UTC)
    with _opened(path) as stream:
        return verify_stream(
            stream,
            policy=policy,
            replay=replay,
            reference_time=reference_time,
            limits=limits,
            dest=dest,
            source=path.name,
        )


def verify_bundle(
    path: Path,
    *,
    policy: TrustPolicy,
    replay: ReplayStore,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedBundle:
    """Every check, nothing written, nothing recorded. Raises a :class:`BundleError` subtype."""
    return _verify(path, policy=policy, replay=replay, now=now, limits=limits, dest=None)


def accept_bundle(
    path: Path,
    *,
    policy: TrustPolicy,
    replay: ReplayStore,
    workdir: Path,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
    holder: Owner | None = None,
) -> AcceptedBundle:
    """Verify, extract into a fresh owner-only directory under ``workdir``, and reserve the bundle
    for ``holder`` (this process by default).

    On any failure nothing remains: the directory is removed and nothing is recorded.
    """
    holder = holder if holder is not None else current_owner()
    private_dir(workdir)
    directory = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir))
    try:
        verified = _verify(path, policy=policy, replay=replay, now=now, limits=limits, dest=directory)
        m = verified.manifest
        replay.reserve(
            bundle_id=m.id,
            name=m.name,
            version=m.version,
            accepted_at=now if now is not None else datetime.now(UTC),
            holder=holder,
        )
    except BaseException as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(exc, _RejectedBundle) and exc.bundle is None:
            exc.bundle = path.name
        raise
    return AcceptedBundle(
        source=verified.source,
        manifest=verified.manifest,
        signers=verified.signers,
        scope=verified.scope,
        envelope=verified.envelope,
        directory=directory,
        holder=holder,
    )


def release_accepted(bundle: AcceptedBundle, replay: ReplayStore) -> None:
    """No job or schedule could be made of ``bundle``: give its acceptance back, remove its files."""
    replay.release(bundle.manifest.id, bundle.holder)
    shutil.rmtree(bundle.directory, ignore_errors=True)


def reverify(
    envelope: bytes | None,
    manifest: Manifest,
    *,
    policy: TrustPolicy,
    directory: Path | None,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedBundle:
    """Judge a bundle accepted earlier again, on what its job kept: ``envelope`` (its JSON),
    the ``manifest`` the job runs, and the files extracted into ``directory``.

    Every check of :func:`verify_stream` but the replay store's: the envelope must still be signed
    by keys today's ``policy`` trusts, in a scope that still covers the manifest, which must be
    the one signed and not expired; each file must still have its signed SHA-256.
    """
    reference_time = now if now is not None else datetime.now(UTC)
    if envelope is None:
        raise EnvelopeMissingError(
            f"{manifest.name} v{manifest.version}: its signed envelope was not kept, so it cannot be"
            " verified again",
            hint="submit a freshly built and signed bundle for the remaining work",
        )
    if len(envelope) > limits.max_envelope_bytes:
        raise EnvelopeTooLargeError(
            f"the kept envelope is {len(envelope)} bytes; the limit is {limits.max_envelope_bytes}",
            member=ENVELOPE_MEMBER,
        )
    parsed = parse_envelope(envelope)
    signers = verified_signers(parsed, policy.public_keys())
    policy.check_signers(signers, signed_by=[s.keyid for s in parsed.signatures])
    signed = parse_manifest(parsed.payload)
    if not _runs_as_signed(manifest, signed):
        raise EnvelopeError(
            f"{manifest.name} v{manifest.version}: the kept manifest is not the one its envelope signs",
            hint="do not resume this job; submit a freshly built and signed bundle",
        )
    if signed.is_expired(reference_time, skew=limits.clock_skew):
        raise ExpiredBundleError(
            f"{signed.name} v{signed.version} expired at {format_time(signed.expires)}"
            f" (now {format_time(reference_time)})",
            hint="ask its author for a freshly built and signed bundle",
        )
    scope = policy.authorize(signed, signers, reference_time=reference_time)
    if signed.files:
        if directory is None:
            raise MissingMemberError(
                f"{signed.name}: the job kept no folder for its files", member=signed.files[0].path
            )
        for entry in signed.files:
            _check_kept_file(directory, entry)
    return VerifiedBundle(
        source=signed.name,
        manifest=signed,
        signers=tuple(policy.keys[k] for k in sorted(signers)),
        scope=scope,
        envelope=parsed,
    )


def _runs_as_signed(kept: Manifest, signed: Manifest) -> bool:
    """``kept`` is ``signed``, but for a delivery timeout a scheduled tick may have shortened."""
    limit = signed.execution.delivery_timeout_seconds
    as_signed = replace(kept, execution=replace(kept.execution, delivery_timeout_seconds=limit))
    return kept.execution.delivery_timeout_seconds <= limit and as_signed.to_json() == signed.to_json()


def _check_kept_file(directory: Path, entry: FileEntry) -> None:
    path = directory.joinpath(*entry.path.split("/"))
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY | _O_CLOEXEC)
        with os.fdopen(fd, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise MissingMemberError(
            f"the kept file {entry.path!r} cannot be read: {exc.strerror}", member=entry.path
        ) from exc
    if digest.hexdigest() != entry.sha256:
        raise DigestMismatchError(
            f"the kept file {entry.path!r} no longer matches its SHA-256 in the signed manifest",
            hint="do not resume this job; its files were altered after it was accepted",
            member=entry.path,
        )


def read_unverified(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[Envelope, Manifest]:
    """The envelope and manifest, signatures NOT checked: for `bundle inspect` and `bundle sign`."""
    with _opened(path) as stream:
        envelope = read_envelope(TarReader(stream), limits)
        return envelope, parse_manifest(envelope.payload)


def check_contents(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[Envelope, Manifest, int]:
    """Structure and every file's size and SHA-256, without trust: what a signer checks before
    signing. Returns the envelope, the manifest and the byte offset where payload members start."""
    with _opened(path) as stream:
        reader = TarReader(stream)
        envelope = read_envelope(reader, limits)
        payload_offset = reader.offset
        manifest = parse_manifest(envelope.payload)
        check_limits(manifest, limits)
        stream_members(reader, manifest, limits, None)
    return envelope, manifest, payload_offset
