"""``vmbusops demo``: a short tour on the simulated Hyper-V host.

Every step goes through the same code a real host uses - a child process speaking PSRP,
Copy-VMFile and Invoke-Command as structured commands - only the host behind the pipe is
simulated. The failures shown are the ones a provider meets every week.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from vmbusops.cli import exitcodes
from vmbusops.cli.common import load, run_trio
from vmbusops.cli.demo_guard import guarded_tour
from vmbusops.cli.guest_cmds import vm_table
from vmbusops.cli.output import RecordPrinter
from vmbusops.cli.output import console as output_console
from vmbusops.credentials import GuestCredential, Secret, resolve_credential
from vmbusops.errors import VmbusOpsError
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.fanout import exec_in_guests
from vmbusops.guestops.host import HyperVHost

TOUR_SCRIPT = """
Write-Verbose "Checking remote management on $env:COMPUTERNAME" -Verbose
Write-Progress -Activity 'Inventory' -Status 'services' -PercentComplete 50
Get-Service -Name WinRM
Write-Information "inventory of $env:COMPUTERNAME done"
Get-Content 'C:\\Temp\\vmbusops\\motd.txt'
Write-Warning 'this is a simulated guest'
"""


def _rule(console: Console, title: str) -> None:
    """A section's heading: a rule across a terminal; elsewhere (a file, a CI log), whose width is
    unbounded so that nothing is cut, a short line instead of a rule thousands of columns wide."""
    if console.is_terminal:
        console.rule(title)
    else:
        console.print(f"\n== {title} ==")


async def _tour(console: Console, host: HyperVHost, credential: GuestCredential) -> int:
    problems = 0

    _rule(console, "[bold]1. The VMs on this host (Get-VM, Get-VMIntegrationService)")
    vms = await host.list_vms()
    console.print(vm_table(vms))

    _rule(console, "[bold]2. Copy a file into guests over the VMBus (Copy-VMFile, no guest network)")
    with tempfile.TemporaryDirectory() as tmp:
        motd = Path(tmp) / "motd.txt"
        motd.write_text("Maintenance window: Sunday 02:00-04:00 UTC\n", encoding="utf-8")
        for vm in ("web01", "web02", "db01"):
            await host.copy_to_guest(vm, str(motd), "C:\\Temp\\vmbusops\\motd.txt")
            console.print(f"  {vm}: copied motd.txt -> C:\\Temp\\vmbusops\\motd.txt")

    _rule(console, "[bold]3. Run a script block in three guests at once (PowerShell Direct), records live")
    printer = RecordPrinter(vm_width=5)
    outcomes = await exec_in_guests(
        host, ["web01", "web02", "db01"], TOUR_SCRIPT, credential, on_record=printer.emit, max_concurrency=3
    )
    printer.flush()
    for vm, outcome in outcomes.items():
        if not outcome.ok:
            problems += 1
            console.print(f"  [red]{vm}: unexpected failure: {outcome.failure or outcome.error_messages}")

    _rule(console, "[bold]4. What goes wrong, and what vmbusops says about it")
    console.print("[dim]a VM that is switched off:[/]")
    outcomes = await exec_in_guests(host, ["legacy01"], "hostname", credential, on_record=lambda r: None)
    console.print(f"  [yellow]{outcomes['legacy01'].failure}")

    console.print("[dim]Copy-VMFile into a VM whose Guest Service Interface is disabled:[/]")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "agent.conf"
        src.write_text("setting=1\n", encoding="utf-8")
        try:
            await host.copy_to_guest("app01", str(src), "C:\\Temp\\agent.conf")
            problems += 1
            console.print("  [red]unexpected: the copy succeeded")
        except VmbusOpsError as exc:
            console.print(f"  [yellow]{type(exc).__name__}: {exc}")
        await host.enable_guest_services("app01")
        await host.copy_to_guest("app01", str(src), "C:\\Temp\\agent.conf")
        console.print("  after Enable-VMIntegrationService: app01: copied agent.conf")

    console.print("[dim]a wrong guest password:[/]")
    wrong = GuestCredential(credential.username, Secret("not-the-password"), reference="wrong")
    outcomes = await exec_in_guests(host, ["web01"], "hostname", wrong, on_record=lambda r: None)
    console.print(f"  [yellow]{outcomes['web01'].failure}")

    console.print("[dim]a VM that does not exist:[/]")
    outcomes = await exec_in_guests(host, ["nosuchvm"], "hostname", credential, on_record=lambda r: None)
    console.print(f"  [yellow]{outcomes['nosuchvm'].failure}")

    problems += await _dsc_tour(console, host, credential)
    problems += await guarded_tour(console, host, credential, _rule)

    _rule(console, "[bold]done")
    return exitcodes.OK if problems == 0 else exitcodes.GUEST_ERRORS


DSC_BUNDLE_TOML = """\
name = "demo-dsc"
version = 1
expires = "1d"
credential = "lab-admin"

[targets]
vms = ["web01", "web02", "db01"]

[execution]
max_concurrency = 3
max_errors = 3

[[steps]]
name = "configure"
kind = "dsc"
mofs = ["dsc/localhost.mof"]
modules = ["dsc/modules/VmbusOpsDemo"]
allow_reboot = true
max_reboots = 2
timeout = "10m"
idempotent = true
"""

IIS_RESOURCE = """
instance of MSFT_RoleResource as $MSFT_RoleResource1ref
{
ResourceID = "[WindowsFeature]IIS";
 Ensure = "Present";
 Name = "Web-Server";
 ModuleName = "PsDesiredStateConfiguration";
ModuleVersion = "1.0";
 ConfigurationName = "VmbusOpsDemo";
};
"""


async def _dsc_tour(console: Console, host: HyperVHost, credential: GuestCredential) -> int:
    """A signed bundle from the scaffold: a custom resource module and a MOF into three guests."""
    from vmbusops.bundle.build import build_bundle, sign_bundle
    from vmbusops.bundle.crypto import PrivateKey
    from vmbusops.bundle.manifest import StepKind
    from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy
    from vmbusops.bundle.replay import ReplayStore
    from vmbusops.bundle.scaffold import write_example
    from vmbusops.bundle.verify import accept_bundle
    from vmbusops.cli.engine_cmds import details_lines
    from vmbusops.engine import EngineEvent, JobSource, Journal, RecordArrived, State, open_engine
    from vmbusops.receipts import receipt_hook
    from vmbusops.records import InformationRecord

    _rule(console, "[bold]5. DSC from a signed bundle: a custom resource module and a MOF, live, with a reboot")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "src"
        write_example(source)
        (source / "bundle.toml").write_text(DSC_BUNDLE_TOML, encoding="utf-8")
        mof = source / "dsc" / "localhost.mof"
        mof.write_text(IIS_RESOURCE + mof.read_text(encoding="utf-8"), encoding="utf-8")
        key = PrivateKey.generate()  # throw-away: trusted only by the in-memory policy below
        scope = Scope(
            keys=(), vms=("web*", "db*"), credentials=("lab-admin",), steps=frozenset({StepKind.DSC}),
            enable_guest_services=True,
        )  # fmt: skip
        policy = TrustPolicy().with_key(TrustedKey(name="demo", public=key.public_key()), scope)
        bundle_file = work / "demo-dsc.vmb"
        manifest = build_bundle(source, bundle_file)
        sign_bundle(bundle_file, key)
        console.print(
            f"  built and signed {bundle_file.name}: {len(manifest.files)} files "
            f"(module VmbusOpsDemo + localhost.mof), key {key.public_key().keyid[:16]}"
        )
        with ReplayStore(work / "replay.sqlite") as replay:
            accepted = accept_bundle(bundle_file, policy=policy, replay=replay, workdir=work / "accepted")
        console.print("  verified against the trust policy: signature, scope (dsc on web*, db*), expiry")

        last: dict[str, str] = {}

        def show(event: EngineEvent) -> None:
            if isinstance(event, RecordArrived):
                rec = event.record.record
                if isinstance(rec, InformationRecord) and "vmbusops.agent" in rec.tags:
                    console.print(f"  {event.record.vm:<6} [yellow]{rec.message_data!s}[/]")
                return
            text = f"{event.state.value}" + (f"  {event.step}" if event.step else "")
            if last.get(event.vm) != text:
                last[event.vm] = text
                console.print(f"  {event.vm:<6} {text}" + (f"  [red]{event.error}[/]" if event.error else ""))

        journal = Journal(work / "journal.sqlite")
        try:
            async with open_engine(host, journal, credential_for=lambda _name: credential, on_event=show) as engine:
                engine.after_run = receipt_hook(journal)
                result = await engine.run_job(JobSource.from_accepted(accepted))
            verified = _verify_receipts(journal, result.job_id)
        finally:
            journal.close()
    console.print(f"  job {result.job_id}: [bold]{result.state.value}[/]")
    for line in details_lines(result.details):
        console.print(line, markup=False)
    if result.state is not State.SUCCESS:
        for vm, error in result.errors.items():
            console.print(f"  [red]{vm}: {error}")
        return 1
    console.print("[dim]signed receipts, checked against the host's key (vmbusops receipt verify does the same):[/]")
    for line in verified:
        console.print(line, markup=False)
    return 0


def _verify_receipts(journal: Any, job_id: int) -> list[str]:
    """Each run's signed receipt, checked as a tenant would: the host's public key, the transcript."""
    from vmbusops.receipts import find_run, host_key, receipts_of, transcript_chunks, verify_receipt

    public = host_key().public_key()
    lines = []
    for run, receipt in zip(find_run(journal, job_id, None), receipts_of(journal, job_id, None), strict=True):
        transcript = b"".join(transcript_chunks(journal, run))
        records = verify_receipt(receipt, public, transcript).transcript_records
        lines.append(f"  receipt verified: {run.vm} (host key {public.keyid[:16]}, transcript of {records} records)")
    return lines


@click.command("demo")
@click.option("--fleet", "fleet", is_flag=True,
              help="Tour a simulated fleet instead: nats-server, a controller and three agents on loopback; "
              "one job over every host, a live migration and a killed agent mid-job.")  # fmt: skip
def demo_cmd(fleet: bool) -> None:
    """A short tour on the simulated Hyper-V host: VMs, Copy-VMFile, live records, common failures."""
    if fleet:
        from vmbusops.cli.demo_fleet import run_fleet_demo

        sys.exit(run_fleet_demo(output_console(highlight=False)))
    config = load()
    credential = resolve_credential(None, config, "sim")
    console = output_console(highlight=False)

    async def main() -> int:
        async with open_host("sim", config=config) as host:
            return await _tour(console, host, credential)

    sys.exit(run_trio(main))
