"""``vmbusops hosts``: the inventory's hosts, whether each answers, and what each allows."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from vmbusops.cli import exitcodes
from vmbusops.cli.common import load, run_trio
from vmbusops.cli.output import console
from vmbusops.errors import ConfigError


@click.command("hosts")
@click.option("--host", "names", multiple=True, metavar="NAME", help="Check only these hosts (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host.")
def hosts_cmd(names: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Check every [hosts.NAME] of config.toml: reachable, and which cmdlets its endpoint allows.

    \b
    Exit codes: 0 every host answered and allows what the agent needs, 3 otherwise, 2 usage.
    """
    from vmbusops.guestops.inventory_check import REQUIRED_CMDLETS, check_hosts

    config = load()
    wanted = list(names) or [entry.name for entry in config.hosts]
    if not wanted:
        raise ConfigError("no hosts to check", hint="add [hosts.NAME] tables to config.toml, or pass --host")

    async def main() -> int:
        reports = await check_hosts(wanted, config, timeout=timeout)
        if as_json:
            for r in reports:
                click.echo(json.dumps({
                    "name": r.name, "transport": r.transport, "address": r.address, "reachable": r.reachable,
                    "seconds": round(r.seconds, 3), "allowed": list(r.allowed), "missing": list(r.missing),
                    "extra": list(r.extra), "error": r.error,
                }))
        else:
            table = Table(box=None, header_style="bold")
            for col in ("Host", "Transport", "Address", "Reachable", "Allows", "Missing", "Beyond the agent's needs"):
                table.add_column(col)
            for r in reports:
                table.add_row(
                    r.name, r.transport, r.address,
                    f"yes ({r.seconds:.1f}s)" if r.reachable else "[red]no[/]",
                    f"{len(r.allowed)} cmdlets" if r.reachable else "-",
                    ("[red]" + ", ".join(r.missing) + "[/]") if r.missing else "-",
                    ", ".join(r.extra) or "-",
                )
            console().print(table)
            for r in reports:
                if r.error:
                    click.secho(f"{r.name}: {r.error}", err=True, fg="red")
            click.echo(f"the agent needs: {', '.join(sorted(REQUIRED_CMDLETS))}", err=True)
        return exitcodes.OK if all(r.ok for r in reports) else exitcodes.HOST_FAILURE

    sys.exit(run_trio(main))
