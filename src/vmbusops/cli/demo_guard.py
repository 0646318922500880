"""The demo's guarded change: a patch and a deployment under a checkpoint, a failing health check,
the VM put back, and the signed receipt that says so (see ``docs/adr/0008-checkpoint-guards.md``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console
from rich.markup import escape

from vmbusops.credentials import GuestCredential
from vmbusops.guestops.host import HyperVHost
from vmbusops.records import OutputRecord, PSObjectValue

VM = "web01"
STATUS = "C:\\Temp\\vmbusops\\app-status.txt"

#: The bundle's source (``bundle.toml``), as its author would write it.
GUARD_BUNDLE: dict[str, Any] = {
    "name": "demo-guarded-patch",
    "version": 1,
    "expires": "1d",
    "credential": "lab-admin",
    "targets": {"vms": [VM]},
    "guard": {
        "checkpoint": "production",
        "min_free_gb": 10,
        "health": {"inline": f"exit (Get-Content -Path '{STATUS}')", "timeout": "1m"},
    },
    "steps": [
        {"name": "app-status", "kind": "script", "inline": f"Set-Content -Path '{STATUS}' -Value 0", "idempotent": True},
        {"name": "patch", "kind": "patch", "guard": "checkpoint", "allow_reboot": True},
        {"name": "deploy", "kind": "script", "guard": "checkpoint",
         "inline": f"Set-Content -Path 'C:\\Temp\\vmbusops\\release.txt' -Value 'v2'\nSet-Content -Path '{STATUS}' -Value 1"},
    ],
}  # fmt: skip


async def _hotfixes(host: HyperVHost, credential: GuestCredential) -> str:
    records, _ = await host.run_in_guest(VM, "Get-HotFix", credential)
    values = [r.record.value for r in records if isinstance(r.record, OutputRecord)]
    ids = sorted({str(v.get("HotFixID")) for v in values if isinstance(v, PSObjectValue) and v.get("HotFixID")})
    return ", ".join(ids) or "none"


async def guarded_tour(
    console: Console, host: HyperVHost, credential: GuestCredential, rule: Callable[[Console, str], None]
) -> int:
    """Section 6 of the tour; returns the problems seen (0 when the rollback went as it should)."""
    from vmbusops.bundle.build import build_bundle, sign_bundle
    from vmbusops.bundle.crypto import PrivateKey
    from vmbusops.bundle.manifest import StepKind
    from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy
    from vmbusops.bundle.replay import ReplayStore
    from vmbusops.bundle.verify import accept_bundle
    from vmbusops.engine import EngineEvent, JobSource, Journal, RecordArrived, State, open_engine
    from vmbusops.receipts import find_run, host_key, receipts_of, verify_receipt
    from vmbusops.records import InformationRecord

    rule(console, "[bold]6. A guarded change that fails its health check is rolled back (Checkpoint-VM, Restore-VMSnapshot)")
    before = await _hotfixes(host, credential)
    console.print(f"  {VM} hotfixes before: {before}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "src"
        source.mkdir()
        (source / "bundle.toml").write_text(tomli_w.dumps(GUARD_BUNDLE), encoding="utf-8")
        key = PrivateKey.generate()  # throw-away: trusted only by the in-memory policy below
        scope = Scope(keys=(), vms=(VM,), credentials=("lab-admin",), steps=frozenset(StepKind), checkpoints=True)
        policy = TrustPolicy().with_key(TrustedKey(name="demo", public=key.public_key()), scope)
        bundle_file = work / "demo-guard.vmb"
        build_bundle(source, bundle_file)
        sign_bundle(bundle_file, key)
        with ReplayStore(work / "replay.sqlite") as replay:
            accepted = accept_bundle(bundle_file, policy=policy, replay=replay, workdir=work / "accepted")
        console.print("  signed by a key whose trust scope allows checkpoints; patch + deploy guarded by one checkpoint")

        def show(event: EngineEvent) -> None:
            if isinstance(event, RecordArrived):
                rec = event.record.record
                if isinstance(rec, InformationRecord) and "vmbusops.agent" in rec.tags:
                    console.print(f"  {event.record.vm:<6} [yellow]{escape(str(rec.message_data))}[/]")
                return
            if event.state.terminal:
                console.print(f"  {event.vm:<6} {event.state.value}" + (f"  [red]{escape(event.error or '')}[/]"))

        journal = Journal(work / "journal.sqlite")
        try:
            async with open_engine(host, journal, credential_for=lambda _name: credential, on_event=show) as engine:
                result = await engine.run_job(JobSource.from_accepted(accepted))
            public = host_key().public_key()
            (run,) = find_run(journal, result.job_id, VM)
            (receipt,) = receipts_of(journal, result.job_id, VM)
            payload = verify_receipt(receipt, public).payload
        finally:
            journal.close()
    from vmbusops.cli.engine_cmds import details_lines

    for line in details_lines(result.details):
        console.print(f"  under the checkpoint: {line.strip()}", markup=False)
    after = await _hotfixes(host, credential)
    console.print(f"  {VM} hotfixes after:  {after}  (the patch installed under the checkpoint is gone)")
    left = [c.name for c in await host.get_checkpoints(VM)]
    console.print(f"  checkpoints left on {VM}: {', '.join(left) or 'none'}")
    console.print(f"  receipt verified (host key {public.keyid[:16]}): outcome {payload['outcome']}, code {payload['code']}")
    for c in payload["checkpoints"]:
        console.print(
            f"    checkpoint {escape(c['name'])} ({c['type']}): {c['outcome']}; taken {c['taken_at']},"
            f" restored {c['restored_at']}, removed {c['removed_at']}"
        )
    ok = run.stored_state is State.ROLLED_BACK and before == after and not left
    return 0 if ok else 1
