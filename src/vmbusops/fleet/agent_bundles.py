"""A dispatched run's bundle, as a fleet agent gets and judges it.

The broker is a transport, never trusted, so the agent judges every bundle itself, exactly as it
judges one submitted to its own API:

1. the archive comes from the fleet's object store by its SHA-256 (cached on disk under the
   agent's private home by that digest, so the runs of one job fetch it once); whatever is read,
   from the cache or the broker, is hashed again and refused if it does not match;
2. :func:`vmbusops.bundle.verify.verify_stream` with this host's trust policy: the signature,
   the trust scope (targets, credential, step kinds, threshold, its end), expiry, every member's
   SHA-256; extracted into a fresh owner-only directory;
3. the run's VM: one of the manifest's targets must name it, and the scope that allowed the
   bundle must cover it by name.

Steps 1 and 2 are done once per digest (:class:`VerifiedBundles`): the runs of one fleet job on
this host share the bundle as the runs of a local job do. What depends on the run or on the moment
is judged again for every run: the trust policy must be the one the signatures were verified
against (its text unchanged; otherwise everything is done again), the bundle not expired nor
issued in the future, a scope of today's policy must still allow it (a scope's end), and step 3.

Replay (a bundle id serves every run of one fleet job, never a second one) is the agent's own
store's (:class:`.agent_store.FleetStore`) and the host's replay store's: see :mod:`.agent`.

A refusal is a :class:`Refusal` (code and one-line reason) that the agent publishes as a
``refused`` fact; nothing runs. Blocking parts run in a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from vmbusops.bundle.manifest import Manifest
from vmbusops.bundle.paths import accepted_bundles_dir, trust_policy_path
from vmbusops.bundle.policy import TrustPolicy, load_trust_policy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import DEFAULT_LIMITS, VerifiedBundle, check_freshness, verify_stream
from vmbusops.engine.run_start import RunStart
from vmbusops.engine.states import State
from vmbusops.engine.targets import resolve_on_host
from vmbusops.errors import BundleError, ConfigError, FailureCode
from vmbusops.fleet import messages
from vmbusops.fleet.broker import Broker
from vmbusops.guestops.host import HyperVHost
from vmbusops.home import home_dir, private_dir
from vmbusops.vm_names import vms_matching

#: The ``refused`` code of a bundle that already served another fleet job on this host.
REPLAYED_BUNDLE = FailureCode.REPLAYED_BUNDLE.value


class Refusal(Exception):
    """This agent refuses to run a dispatched run's bundle (nothing of it ran)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FleetBundle:
    verified: VerifiedBundle
    #: Where its files were extracted (shared by the runs of its digest: see :class:`VerifiedBundles`).
    directory: Path
    #: The trust policy it was verified with.
    policy: TrustPolicy | None = None
    digest: str = ""
    #: ``verified.envelope.to_json()``, made once for the local jobs of its runs.
    envelope_json: bytes = b""


def bundle_cache_dir() -> Path:
    """Where fetched bundle archives are kept, by digest (owner-only)."""
    return private_dir(home_dir() / "fleet" / "bundles")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_cached(cache: Path, digest: str) -> bytes | None:
    """The cached archive of ``digest`` if it is there and still hashes to it (else it is removed)."""
    path = cache / f"{digest}.vmb"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if _sha256(data) != digest:
        path.unlink(missing_ok=True)
        return None
    return data


def write_cached(cache: Path, digest: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=cache)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, cache / f"{digest}.vmb")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def fetch_bundle(broker: Broker, digest: str, *, cache: Path, max_bytes: int) -> bytes:
    """The archive of ``digest``, from the cache or the object store; :class:`Refusal` if the
    store has none, or something that is not it; :class:`BrokerError` if the broker failed."""
    data = await trio.to_thread.run_sync(read_cached, cache, digest)
    if data is not None:
        return data
    data = await broker.get_bundle(digest)
    if data is None:
        raise Refusal(FailureCode.BUNDLE_REJECTED.value, f"the fleet's bundle store has no bundle {digest[:16]}")
    if len(data) > max_bytes:
        raise Refusal(
            FailureCode.BUNDLE_REJECTED.value,
            f"bundle {digest[:16]} is {len(data)} bytes, over this agent's limit of {max_bytes}",
        )
    if _sha256(data) != digest:
        raise Refusal(
            FailureCode.BUNDLE_REJECTED.value,
            f"the bundle fetched as {digest[:16]} does not have that SHA-256; not run",
        )
    await trio.to_thread.run_sync(write_cached, cache, digest, data)
    return data


def verify_for_vm(data: bytes, *, vm: str, digest: str, now: datetime | None = None) -> FleetBundle:
    """Verify the archive with this host's trust policy and extract it; :class:`Refusal` if any
    check fails, or the run's VM is not among its targets and its scope (blocks: a worker thread)."""
    reference = now if now is not None else datetime.now(UTC)
    workdir = private_dir(accepted_bundles_dir())
    directory = Path(tempfile.mkdtemp(prefix="fleet-", dir=workdir))
    try:
        try:
            policy = load_trust_policy(trust_policy_path())
            # The text is read again on every call; an unchanged text gives this same object,
            # which is how :class:`VerifiedBundles` knows the signatures need no new check.
            # Replay is judged by the caller, per fleet job: this verification checks expiry only.
            verified = verify_stream(
                io.BytesIO(data),
                policy=policy,
                replay=ReplayStore.in_memory(),
                reference_time=reference,
                dest=directory,
                source=f"fleet bundle {digest[:16]}",
            )
        except BundleError as exc:
            raise Refusal(exc.code.value, exc.message) from None
        check_vm(verified, vm)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return FleetBundle(
        verified=verified, directory=directory, policy=policy, digest=digest, envelope_json=verified.envelope.to_json()
    )


def check_vm(verified: VerifiedBundle, vm: str) -> None:
    """The run's VM must be one the manifest targets and one the signers' scope covers by name."""
    manifest = verified.manifest
    # Targets by group or tag are judged on the host (:func:`vm_selected_here`); names here.
    if manifest.targets.vms and not any(vms_matching(pattern, [vm]) for pattern in manifest.targets.vms):
        raise Refusal(
            FailureCode.BUNDLE_REJECTED.value, f"{manifest.name} v{manifest.version} does not target VM {vm!r}"
        )
    if verified.scope.uncovered_targets([vm]):
        raise Refusal(
            FailureCode.BUNDLE_REJECTED.value,
            f"VM {vm!r} is outside the VMs its signers may sign for on this host ({', '.join(verified.scope.vms)})",
        )


async def vm_selected_here(manifest: Manifest, vm: str, host: HyperVHost) -> None:
    """A bundle that targets groups or tags: the run's VM must be one its targets select on this
    host now (its groups, its Notes); :class:`Refusal` if not."""
    if not (manifest.targets.groups or manifest.targets.tags):
        return
    try:
        selected = await resolve_on_host(manifest, host)
    except ConfigError as exc:
        raise Refusal(FailureCode.BUNDLE_REJECTED.value, exc.message) from None
    if vm.casefold() not in {name.casefold() for name in selected}:
        raise Refusal(
            FailureCode.BUNDLE_REJECTED.value,
            f"{manifest.name} v{manifest.version} does not select VM {vm!r} on this host (its groups or tags)",
        )


def dispatch_start(work: messages.DispatchWork, steps: int) -> RunStart | None:
    """The dispatch's start as the engine takes it (None: from the beginning, nothing of the run
    done anywhere yet); a Refusal when it does not fit the bundle."""
    try:
        start = RunStart(
            step_states=tuple(State(s) for s in work.start.step_states),
            attempts=tuple(work.start.attempts),
            next_seq=work.start.next_seq,
        )
        start.check(steps)
    except ValueError as exc:
        raise Refusal(FailureCode.INTERNAL.value, f"the dispatch's start does not fit the bundle: {exc}") from None
    if start.next_seq == 1 and not any(start.attempts) and all(s is State.PENDING for s in start.step_states):
        return None  # what the engine does anyway, without a commit (and a batch) to say so
    return start


def remove_bundle(bundle: FleetBundle) -> None:
    shutil.rmtree(bundle.directory, ignore_errors=True)


@dataclass(slots=True)
class _Cached:
    bundle: FleetBundle
    #: Runs using its directory now.
    users: int = 0


class VerifiedBundles:
    """Bundles this agent fetched, verified and extracted, by the SHA-256 of the archive: what a
    fleet job's runs share on this host (see the module's docstring for what each run is still
    judged on). At most ``keep`` digests no run uses are kept; the least recently used of the rest
    are removed (their directories too) when another comes in, as is one verified against a
    trust policy that changed since, once no run uses it.

    :meth:`take` and :meth:`release` run on the agent's trio thread, :meth:`add` in a worker
    thread (with the verification before it): a lock keeps them apart."""

    def __init__(self, *, keep: int = 8) -> None:
        self.keep = keep
        self._entries: dict[str, _Cached] = {}
        self._retired: list[_Cached] = []
        self._lock = threading.Lock()
        self._freshness: ReplayStore | None = None
        #: Full verifications made (tests read it).
        self.verified = 0

    def take(self, digest: str, *, vm: str, now: datetime | None = None) -> FleetBundle | None:
        """The bundle of ``digest`` judged again for this run, counted as used until
        :meth:`release`; None when it is not here (or was verified against another trust policy
        text): then fetch, :func:`verify_for_vm` and :meth:`add`. :class:`Refusal` if this run
        may not use it."""
        with self._lock:
            cached = self._entries.get(digest)
        if cached is None:
            return None
        try:
            policy = load_trust_policy(trust_policy_path())
        except BundleError:
            policy = None  # verified in full again, which refuses it with the policy's own error
        bundle = cached.bundle
        if policy is not bundle.policy or policy is None:
            with self._lock:
                if self._entries.get(digest) is cached:
                    del self._entries[digest]
                    self._retired.append(cached)
            return None
        reference = now if now is not None else datetime.now(UTC)
        manifest = bundle.verified.manifest
        if self._freshness is None:
            self._freshness = ReplayStore.in_memory()  # never holds anything: freshness only
        try:
            check_freshness(manifest, reference_time=reference, replay=self._freshness, skew=DEFAULT_LIMITS.clock_skew)
            signers = frozenset(k.keyid for k in bundle.verified.signers)
            scope = policy.authorize(manifest, signers, reference_time=reference)
        except BundleError as exc:
            raise Refusal(exc.code.value, exc.message) from None
        verified = dataclasses.replace(bundle.verified, scope=scope)
        check_vm(verified, vm)
        with self._lock:
            cached.users += 1
        return dataclasses.replace(bundle, verified=verified)

    def add(self, bundle: FleetBundle) -> None:
        """Keep ``bundle`` (just verified, counted as used by the run that verified it); remove
        what is no longer kept (blocks: a worker thread)."""
        with self._lock:
            self.verified += 1
            old = self._entries.pop(bundle.digest, None)
            if old is not None:
                self._retired.append(old)
            self._entries[bundle.digest] = _Cached(bundle, users=1)
            doomed = [c for c in self._retired if c.users == 0]
            self._retired = [c for c in self._retired if c.users > 0]
            idle = [d for d, c in self._entries.items() if c.users == 0]
            for digest in idle[: max(0, len(idle) - self.keep)]:  # oldest first (insertion order)
                doomed.append(self._entries.pop(digest))
        for cached in doomed:
            remove_bundle(cached.bundle)

    def release(self, bundle: FleetBundle) -> None:
        """A run is done with ``bundle``; the most recently released digest is kept longest."""
        with self._lock:
            for cached in (self._entries.get(bundle.digest), *self._retired):
                if cached is not None and cached.bundle.directory == bundle.directory:
                    cached.users = max(0, cached.users - 1)
                    if self._entries.get(bundle.digest) is cached:
                        self._entries[bundle.digest] = self._entries.pop(bundle.digest)
                    return


__all__ = [
    "REPLAYED_BUNDLE",
    "FleetBundle",
    "Refusal",
    "VerifiedBundles",
    "bundle_cache_dir",
    "check_vm",
    "dispatch_start",
    "fetch_bundle",
    "read_cached",
    "remove_bundle",
    "verify_for_vm",
    "vm_selected_here",
    "write_cached",
]  # fmt: skip

