"""``vmbusops demo``: a short tour on the simulated Hyper-V host.

Every step goes through the same code a real host uses - a child process speaking PSRP,
Copy-VMFile and Invoke-Command as structured commands - only the host behind the pipe is
simulated. The failures shown are the ones a provider meets every week.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from vmbusops.cli import exitcodes
from vmbusops.cli.common import load, resolve_credential, run_trio
from vmbusops.cli.guest_cmds import vm_table
from vmbusops.cli.output import RecordPrinter
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.errors import VmbusOpsError
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.fanout import exec_in_guests
from vmbusops.guestops.host import HyperVHost

TOUR_SCRIPT = """
Write-Verbose "Checking remote management on $env:COMPUTERNAME"
Write-Progress -Activity 'Inventory' -Status 'services' -PercentComplete 50
Get-Service -Name WinRM
Write-Information "inventory of $env:COMPUTERNAME done"
Get-Content 'C:\\Temp\\vmbusops\\motd.txt'
Write-Warning 'this is a simulated guest'
"""


async def _tour(console: Console, host: HyperVHost, credential: GuestCredential) -> int:
    problems = 0

    console.rule("[bold]1. The VMs on this host (Get-VM, Get-VMIntegrationService)")
    vms = await host.list_vms()
    console.print(vm_table(vms))

    console.rule("[bold]2. Copy a file into guests over the VMBus (Copy-VMFile, no guest network)")
    with tempfile.TemporaryDirectory() as tmp:
        motd = Path(tmp) / "motd.txt"
        motd.write_text("Maintenance window: Sunday 02:00-04:00 UTC\n", encoding="utf-8")
        for vm in ("web01", "web02", "db01"):
            await host.copy_to_guest(vm, str(motd), "C:\\Temp\\vmbusops\\motd.txt")
            console.print(f"  {vm}: copied motd.txt -> C:\\Temp\\vmbusops\\motd.txt")

    console.rule("[bold]3. Run a script block in three guests at once (PowerShell Direct), records live")
    printer = RecordPrinter(vm_width=5)
    outcomes = await exec_in_guests(
        host, ["web01", "web02", "db01"], TOUR_SCRIPT, credential, on_record=printer.emit, max_concurrency=3
    )
    printer.flush()
    for vm, outcome in outcomes.items():
        if not outcome.ok:
            problems += 1
            console.print(f"  [red]{vm}: unexpected failure: {outcome.failure or outcome.error_messages}")

    console.rule("[bold]4. What goes wrong, and what vmbusops says about it")
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

    console.rule("[bold]done")
    return exitcodes.OK if problems == 0 else exitcodes.GUEST_ERRORS


@click.command("demo")
def demo_cmd() -> None:
    """A short tour on the simulated Hyper-V host: VMs, Copy-VMFile, live records, common failures."""
    config = load()
    credential = resolve_credential(None, config, "sim")
    console = Console(highlight=False)

    async def main() -> int:
        async with open_host("sim", config=config) as host:
            return await _tour(console, host, credential)

    sys.exit(run_trio(main))
