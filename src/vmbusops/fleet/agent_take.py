"""How a fleet agent takes a dispatched run's bundle: :class:`BundleTaker`.

The bundle is judged by :mod:`.agent_bundles` (fetched by digest and verified once per digest and
trust policy, judged again for every run on what depends on the run or the moment), then bound to
its fleet job (replay: a bundle id serves every run of one fleet job on this host and never a
second job). The binding is :class:`.agent_store.FleetStore`'s, and the first run of a job here
also has the host's replay store judge and record the bundle, as for any acceptance, so a bundle
run here before never serves the fleet and a fleet bundle is never run again by
``vmbusops run``. A binding, once made, never changes, so this process remembers the ones it made
or read and asks the store only for a bundle id it has not seen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from vmbusops.bundle.errors import ReplayedBundleError
from vmbusops.engine import acceptance
from vmbusops.engine.engine import Engine
from vmbusops.engine.run_start import RunStart
from vmbusops.errors import BundleError, VmbusOpsError
from vmbusops.fleet import messages
from vmbusops.fleet.agent_bundles import (
    REPLAYED_BUNDLE,
    FleetBundle,
    Refusal,
    VerifiedBundles,
    bundle_cache_dir,
    dispatch_start,
    fetch_bundle,
    verify_for_vm,
    vm_selected_here,
)
from vmbusops.fleet.agent_store import FleetStore
from vmbusops.fleet.broker import Broker
from vmbusops.owner import Owner


class BundleTaker:
    def __init__(
        self,
        broker: Broker,
        engine: Engine,
        store: FleetStore,
        owner: Owner,
        *,
        max_bundle_bytes: int,
        retrying: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    ) -> None:
        self.broker = broker
        self.engine = engine
        self.store = store
        self.owner = owner
        self.max_bundle_bytes = max_bundle_bytes
        self.retrying = retrying
        self.bundles = VerifiedBundles()
        #: Bundle id -> the fleet job it serves here, as bound (a binding never changes).
        self.bound: dict[str, int] = {}

    async def take(self, work: messages.DispatchWork) -> tuple[FleetBundle, RunStart | None]:
        """The run's bundle, judged for it and bound to its fleet job, and the dispatch's start
        checked against it; :class:`Refusal` if refused (nothing is left in use then). The
        bundle is the run's until :meth:`release`."""
        bundle = self.bundles.take(work.bundle, vm=work.vm)
        if bundle is None:
            data = await self.retrying(
                lambda: fetch_bundle(self.broker, work.bundle, cache=bundle_cache_dir(), max_bytes=self.max_bundle_bytes)
            )

            def verify() -> FleetBundle:
                verified = verify_for_vm(data, vm=work.vm, digest=work.bundle)
                self.bundles.add(verified)
                return verified

            bundle = await trio.to_thread.run_sync(verify)
        try:
            start = dispatch_start(work, len(bundle.verified.manifest.steps))
            await vm_selected_here(bundle.verified.manifest, work.vm, self.engine.host)
            try:
                # Resolved here, from this agent's own store, as for a local job; only found now
                # (a missing one refuses the run before anything is used up), never sent anywhere.
                self.engine.credential_for(bundle.verified.manifest.credential)
            except VmbusOpsError as exc:
                raise Refusal(exc.code.value, exc.message) from None
            bound = self.bound.get(bundle.verified.manifest.id)
            if bound is None:
                bound = await trio.to_thread.run_sync(self._bind, bundle, work.job)
            self._check_bound(bundle, bound, work.job)
        except BaseException:
            self.release(bundle)
            raise
        return bundle, start

    def release(self, bundle: FleetBundle) -> None:
        """A run is done with its bundle (its directory may go once no run uses it)."""
        self.bundles.release(bundle)

    def _bind(self, bundle: FleetBundle, job: int) -> int:
        manifest = bundle.verified.manifest
        bound = self.store.bundle_job(manifest.id)
        if bound is None:
            bound = self.store.bind_bundle(manifest.id, job)
            if bound == job:
                # The first run of this job here. Bound first, so a crash in between cannot
                # refuse this job's own later runs.
                try:
                    self._accept_once(bundle)
                except Refusal:
                    self.store.unbind_bundle(manifest.id, job)
                    raise
        self.bound[manifest.id] = bound
        return bound

    @staticmethod
    def _check_bound(bundle: FleetBundle, bound: int, job: int) -> None:
        if bound != job:
            manifest = bundle.verified.manifest
            raise Refusal(
                REPLAYED_BUNDLE,
                f"bundle id {manifest.id} ({manifest.name} v{manifest.version}) already served fleet job"
                f" {bound} on this host; a bundle serves one job",
            )

    def _accept_once(self, bundle: FleetBundle) -> None:
        manifest = bundle.verified.manifest
        with acceptance.open_replay(self.engine.journal) as replay:
            try:
                replay.reserve(
                    bundle_id=manifest.id, name=manifest.name, version=manifest.version,
                    accepted_at=datetime.now(UTC), holder=self.owner,
                )  # fmt: skip
                replay.confirm(manifest.id)
            except ReplayedBundleError as exc:
                raise Refusal(REPLAYED_BUNDLE, exc.message) from None
            except BundleError as exc:
                raise Refusal(exc.code.value, exc.message) from None


__all__ = ["BundleTaker"]
