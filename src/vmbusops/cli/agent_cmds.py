"""``vmbusops agent``: run the host agent (engine, scheduler, HTTP API), and manage who may use it.

``agent token create`` prints a token once; only its hash is kept. ``agent cert allow`` accepts a
TLS client certificate by its SHA-256 fingerprint. Both take a scope: operations (``--scope``)
and VM name globs (``--vm``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import trio
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vmbusops.cli import exitcodes
from vmbusops.cli.common import host_option, load
from vmbusops.cli.output import console, terminal_safe
from vmbusops.cli.remote import agent_read_option
from vmbusops.config import DEFAULT_MAX_SESSIONS, MAX_SESSIONS_LIMIT
from vmbusops.credentials import credential_resolver
from vmbusops.errors import ConfigError
from vmbusops.heap import settle
from vmbusops.times import iso_time, iso_time_or_none

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _seconds(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"bad duration {text!r}", hint="for example 90d, 12h, 30m")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _fleet_options(fn: Any) -> Any:
    """``--fleet`` and its companions (each also in the config file's ``[fleet]`` section)."""
    path = click.Path(dir_okay=False)
    options: list[tuple[tuple[str, str], dict[str, Any]]] = [
        (("--fleet", "url"), {"metavar": "URL", "help": "Join a fleet: its NATS server, nats://HOST:PORT or tls://..."}),
        (("--fleet-host", "fleet_host"), {"metavar": "NAME",
            "help": "This host's name in the fleet (default: [fleet] host, else from --host: NAME for sim:NAME, "
                    "this machine's name for local, the remote's for ssh:// and winrm://)."}),
        (("--cluster", "cluster"), {"metavar": "NAME", "help": "The failover cluster this host belongs to."}),
        (("--fleet-user", "user"), {"metavar": "NAME", "help": "NATS user (its password: $VMBUSOPS_NATS_PASSWORD)."}),
        (("--fleet-password-file", "password_file"), {"type": path, "metavar": "FILE",
            "help": "Read the NATS password from FILE (never give it as a flag)."}),
        (("--fleet-ca", "tls_ca"), {"type": path, "metavar": "PEM", "help": "CA of the NATS server's TLS certificate."}),
        (("--fleet-cert", "tls_cert"), {"type": path, "metavar": "PEM", "help": "TLS client certificate for NATS."}),
        (("--fleet-key", "tls_key"), {"type": path, "metavar": "PEM", "help": "Its private key."}),
    ]  # fmt: skip
    for decl, kw in reversed(options):
        fn = click.option(*decl, default=None, **kw)(fn)
    return fn


@click.group("agent", invoke_without_command=True)
@host_option
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Address to serve on (default: [agent] listen, 127.0.0.1:8421).",
)
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the listening URLs here once ready.")  # fmt: skip
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--max-sessions", type=click.IntRange(1, MAX_SESSIONS_LIMIT), default=None, metavar="N",
    help=f"PowerShell Direct sessions this agent opens at once, all its jobs together (default: [host] "
    f"max_sessions, {DEFAULT_MAX_SESSIONS}).",
)  # fmt: skip
@_fleet_options
@click.pass_context
def agent(
    ctx: click.Context,
    host: str | None,
    listen: str | None,
    ready_file: Path | None,
    log_level: str,
    max_sessions: int | None,
    url: str | None,
    fleet_host: str | None,
    cluster: str | None,
    user: str | None,
    password_file: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the host agent: engine, scheduler and the HTTP API (JSON logs on stderr).

    Stops gracefully on SIGTERM, Ctrl-C or a hangup (unless started with nohup): runs get [agent]
    shutdown_grace_seconds to finish, then are stopped; a second signal stops them at once.

    At most --max-sessions guest sessions are open at once; runs beyond it wait for one to end,
    and a bundle's max_concurrency is a limit for its job under this one. The default, 32, is
    Invoke-Command's own ThrottleLimit: each PowerShell Direct session holds a runspace in the
    host's PowerShell process and a remoting process in the guest, so raise it with the host's
    memory in mind.

    With --fleet nats://HOST:PORT (or [fleet] url) the agent also joins a fleet: it heartbeats
    its host and VMs, takes the runs the fleet's controller dispatches to it, verifies each
    bundle with this host's own trust policy, runs it here and publishes its records and states.
    A bad URL is a usage error (2); a broker that cannot be reached at start stops it (3).
    """
    if ctx.invoked_subcommand is not None:
        return
    from vmbusops.api.logs import configure_json_logging
    from vmbusops.api.server import check_ready_file, run_agent
    from vmbusops.schedule.scheduler import Scheduler

    check_ready_file(ready_file)
    config = load()
    if max_sessions is not None:
        config = dataclasses.replace(config, max_sessions=max_sessions)
    join = None
    if url is not None or config.fleet.url is not None:
        import vmbusops.fleet.nats_broker  # noqa: F401 (imported before the heap settles, not after)
        from vmbusops.fleet.agent_config import fleet_join

        join = fleet_join(
            config.fleet, url=url, host=fleet_host, default_host=host or config.host, cluster=cluster, user=user,
            password_file=password_file, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        )  # fmt: skip
    configure_json_logging(log_level)
    settle()  # everything the agent runs is imported: full collections need not look at it again
    code = trio.run(
        lambda: run_agent(
            config,
            credential_for=credential_resolver(config, host),
            host=host,
            listen=listen,
            ready_file=ready_file,
            scheduler_factory=Scheduler.for_service,
            fleet=join,
        )
    )
    sys.exit(code)


def _scope_options(fn: Any) -> Any:
    fn = click.option(
        "--expires-in", default=None, metavar="DURATION", help="e.g. 90d, 12h (default: never)."
    )(fn)
    fn = click.option(
        "--vm", "vms", multiple=True, metavar="GLOB", help="VMs it may see (repeatable; '*' for all)."
    )(fn)
    fn = click.option(
        "--scope", "scopes", multiple=True, metavar="OPS",
        help="Operations: submit, read, cancel, metrics, or all (comma-separated or repeated).",
    )(fn)  # fmt: skip
    return click.option("--name", required=True, help="Who it is for (shown in logs).")(fn)


def _principal_json(p: Any) -> dict[str, Any]:
    return {
        "id": p.id, "kind": p.kind, "name": p.name, "operations": sorted(o.value for o in p.operations),
        "vms": list(p.vms), "created_at": iso_time(p.created_at), "expires_at": iso_time_or_none(p.expires_at),
        "revoked_at": iso_time_or_none(p.revoked_at),
    }  # fmt: skip


@agent.group("token")
def token() -> None:
    """Bearer tokens for API clients."""


@token.command("create")
@_scope_options
@click.option("--json", "as_json", is_flag=True)
def token_create(
    name: str, scopes: tuple[str, ...], vms: tuple[str, ...], expires_in: str | None, as_json: bool
) -> None:
    """Create a token and print it once; only its hash is stored."""
    from vmbusops.api.auth import PrincipalStore, parse_operations

    ops = parse_operations(scopes or ("read",))
    expires = time.time() + _seconds(expires_in) if expires_in else None
    with PrincipalStore() as store:
        principal, text = store.create_token(name=name, operations=ops, vms=list(vms), expires_at=expires)
    if as_json:
        click.echo(json.dumps({**_principal_json(principal), "token": text}))
        return
    click.echo(text)
    click.echo(
        f"token {principal.id} for {name}: {', '.join(sorted(o.value for o in ops))} on {', '.join(vms)}"
        " (shown once; store it now)",
        err=True,
    )


def _list(kind: str, as_json: bool) -> None:
    from vmbusops.api.auth import PrincipalStore

    with PrincipalStore() as store:
        principals = [p for p in store.list() if p.kind == kind]
    if as_json:
        for p in principals:
            click.echo(json.dumps(_principal_json(p)))
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Name", "Operations", "VMs", "Expires", "Status"):
        table.add_column(col)
    now = time.time()
    for p in principals:
        status = "revoked" if p.revoked_at else "expired" if not p.active(now) else "active"
        expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.expires_at)) if p.expires_at else "never"
        table.add_row(
            p.id, Text(terminal_safe(p.name)), ",".join(sorted(o.value for o in p.operations)),
            Text(terminal_safe(",".join(p.vms))), expires, status,
        )  # fmt: skip
    console(highlight=False).print(table)


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
def token_list(as_json: bool) -> None:
    """Tokens (never their secrets)."""
    _list("token", as_json)


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a token at once (by its id, the part after vmo_)."""
    from vmbusops.api.auth import PrincipalStore

    with PrincipalStore() as store:
        store.revoke(token_id)
    click.echo(f"token {token_id} revoked")


@agent.group("cert")
def cert() -> None:
    """TLS client certificates accepted as API clients (needs [agent] client_ca)."""


@cert.command("allow")
@_scope_options
@click.argument("fingerprint")
def cert_allow(
    name: str, scopes: tuple[str, ...], vms: tuple[str, ...], expires_in: str | None, fingerprint: str
) -> None:
    """Accept the client certificate with this SHA-256 FINGERPRINT, with a scope."""
    from vmbusops.api.auth import PrincipalStore, parse_operations

    ops = parse_operations(scopes or ("read",))
    expires = time.time() + _seconds(expires_in) if expires_in else None
    with PrincipalStore() as store:
        p = store.allow_certificate(
            name=name, fingerprint=fingerprint, operations=ops, vms=list(vms), expires_at=expires
        )
    click.echo(f"certificate {p.id} for {name} allowed")


@cert.command("list")
@click.option("--json", "as_json", is_flag=True)
def cert_list(as_json: bool) -> None:
    _list("cert", as_json)


@cert.command("revoke")
@click.argument("cert_id")
def cert_revoke(cert_id: str) -> None:
    from vmbusops.api.auth import PrincipalStore

    with PrincipalStore() as store:
        store.revoke(cert_id)
    click.echo(f"certificate {cert_id} revoked")


@click.group("schedule")
def schedule() -> None:
    """Schedules of signed bundles (registered by submitting a bundle that carries one)."""


@schedule.command("list")
@agent_read_option("the local schedule store")
@click.option("--json", "as_json", is_flag=True)
def schedule_list(agent_url: str | None, token_file: Path | None, as_json: bool) -> None:
    """Registered schedules with their next run times, last outcome and missed runs."""
    if agent_url is not None:
        from vmbusops.cli.remote import problem, resolve_agent, run_client

        client = resolve_agent(agent_url, token_file)
        rows: list[dict[str, Any]] = []

        async def fetch() -> int:
            async with client.client() as http:
                response = await http.get("/v1/schedules")
                if response.status_code != 200:
                    raise problem(response)
                rows.extend(response.json()["schedules"])
            return 0

        run_client(fetch)
    else:
        from vmbusops.schedule.clock import SystemClock
        from vmbusops.schedule.scheduler import entry_json
        from vmbusops.schedule.store import ScheduleStore

        store = ScheduleStore()
        try:
            rows = [entry_json(e, SystemClock()) for e in store.all()]
        finally:
            store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = Table(box=None, header_style="bold")
    for col in ("Name", "Version", "Cron", "TZ", "Next run", "Cut-off", "Last job", "Last outcome", "Missed"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            escape(r["name"]), str(r["version"]), escape(r["cron"]), escape(r["timezone"]),
            r["next_run"] or ("expired" if r.get("expired") else "-"), r["next_cutoff"] or "-",
            str(r["last_job"] or "-"), escape(terminal_safe(r["last_outcome"] or "-")), str(r["missed"]),
        )  # fmt: skip
    console(highlight=False).print(table)


@schedule.command("remove", epilog=exitcodes.EXIT_CODES_HELP)
@click.argument("name")
@agent_read_option("the local schedule store")
def schedule_remove(name: str, agent_url: str | None, token_file: Path | None) -> None:
    """Forget a schedule: none of its ticks runs from now on. A job it started goes on (cancel it
    with jobs cancel). An agent on this host stops it at once, and through --agent the token needs
    the cancel scope."""
    if agent_url is not None:
        from vmbusops.cli.remote import problem, resolve_agent, run_client

        client = resolve_agent(agent_url, token_file)

        async def delete() -> int:
            async with client.client() as http:
                response = await http.delete(f"/v1/schedules/{quote(name, safe='')}")
                if response.status_code != 200:
                    raise problem(response)
            return 0

        run_client(delete)
    else:
        from vmbusops.schedule.store import ScheduleStore

        store = ScheduleStore()
        try:
            removed = store.remove(name)
        finally:
            store.close()
        if not removed:
            raise ConfigError(f"no schedule named {name!r}", hint="list them with: vmbusops schedule list")
    click.echo(f"schedule {terminal_safe(name)} removed; none of its ticks runs from now on")
