"""``vmbusops fleet``: the fleet's controller (``fleet serve``) and its broker's configuration.

``fleet serve`` connects to NATS (``--nats``), follows the fleet's log into its own journal and
serves the agent's HTTP API over it: ``submit``, ``jobs``, ``logs --agent URL`` and the web
console work against it as against one agent. Run two or more: one holds the lease and decides,
the others follow and take over when it stops renewing it. Tokens and client certificates are the
agent's (``vmbusops agent token create`` in the controller's VMBUSOPS_HOME).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
import trio

from vmbusops.cli.common import load
from vmbusops.errors import ConfigError
from vmbusops.fleet.agent_config import ENV_NATS_PASSWORD, check_url
from vmbusops.heap import settle


@click.group("fleet")
def fleet() -> None:
    """A fleet of Hyper-V hosts over NATS JetStream: its controller and broker set-up."""


def _password(password_file: Path | None) -> str | None:
    """The NATS password: from its file, else ``$VMBUSOPS_NATS_PASSWORD`` (never a flag)."""
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the NATS password file {password_file}: {exc.strerror}",
                hint="give a readable file holding only the password",
            ) from None
        if not text:
            raise ConfigError(f"the NATS password file {password_file} is empty")
        return text
    return os.environ.get(ENV_NATS_PASSWORD) or None


@fleet.command("serve")
@click.option("--nats", "url", default=None, metavar="URL",
              help="The fleet's NATS server: nats://HOST:PORT or tls://... (default: [fleet] url).")  # fmt: skip
@click.option("--nats-user", "user", default=None, metavar="NAME", help=f"NATS user (its password: ${ENV_NATS_PASSWORD}).")
@click.option("--nats-password-file", "password_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Read the NATS password from this file.")  # fmt: skip
@click.option("--nats-ca", "tls_ca", type=click.Path(dir_okay=False), default=None, metavar="PEM",
              help="CA of the NATS server's TLS certificate.")  # fmt: skip
@click.option("--nats-cert", "tls_cert", type=click.Path(dir_okay=False), default=None, metavar="PEM",
              help="TLS client certificate for NATS.")  # fmt: skip
@click.option("--nats-key", "tls_key", type=click.Path(dir_okay=False), default=None, metavar="PEM", help="Its private key.")
@click.option("--listen", default=None, metavar="HOST:PORT", help="Address to serve on (default: [agent] listen).")
@click.option("--url", "public_url", default=None, metavar="URL",
              help="Where clients reach this controller (kept in the lease; default: the listening address).")  # fmt: skip
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the listening URLs here once ready.")  # fmt: skip
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--id", "controller_id", default=None, metavar="NAME",
              help="This controller's name in the lease (default: HOSTNAME:PORT of --listen).")  # fmt: skip
@click.option("--canary", type=click.IntRange(0, 100_000), default=1, show_default=True,
              help="Runs of each job's first wave, which run alone; the rest start once they all succeeded (0: none).")  # fmt: skip
@click.option("--host-ttl", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="SECONDS",
              help="A host whose heartbeat has not moved for this long is dead.")  # fmt: skip
@click.option("--lease-ttl", type=click.FloatRange(0.3, 3600), default=15.0, show_default=True, metavar="SECONDS",
              help="A standby takes the lease when it has not moved for this long.")  # fmt: skip
@click.option("--placement-timeout", type=click.FloatRange(0.1, 86400 * 7), default=300.0, show_default=True,
              metavar="SECONDS", help="A run whose VM is on no live host for this long is skipped.")  # fmt: skip
def serve_cmd(
    url: str | None,
    user: str | None,
    password_file: Path | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    listen: str | None,
    public_url: str | None,
    ready_file: Path | None,
    log_level: str,
    controller_id: str | None,
    canary: int,
    host_ttl: float,
    lease_ttl: float,
    placement_timeout: float,
) -> None:
    """Run a fleet controller: the agent's HTTP API over the whole fleet (JSON logs on stderr).

    Prints {"event": "ready", "listen": [...]} once it serves. Stops on SIGTERM, Ctrl-C or a hangup
    (unless started with nohup); a standby takes over once the lease has not moved for --lease-ttl.
    """
    from vmbusops.api.logs import configure_json_logging
    from vmbusops.api.server import check_ready_file
    from vmbusops.fleet.controller import ControllerOptions
    from vmbusops.fleet.serve import run_controller

    config = load()
    section = config.fleet
    url = url or section.url
    if url is None:
        raise ConfigError("no NATS URL", hint="pass --nats nats://HOST:PORT or set [fleet] url")
    check_url(url, ("--nats", "--nats-user", "--nats-password-file"))
    user = user or section.user
    tls_ca, tls_cert, tls_key = tls_ca or section.tls_ca, tls_cert or section.tls_cert, tls_key or section.tls_key
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--nats-cert and --nats-key go together", hint="give both, or neither")
    bind = listen or config.agent.listen
    password = _password(password_file or (Path(section.password_file) if section.password_file else None))
    if password is not None and user is None:
        raise ConfigError("a NATS password without a user", hint="give the user with --nats-user or [fleet] user")

    @asynccontextmanager
    async def open_fleet_broker() -> AsyncIterator[Any]:
        from vmbusops.fleet.nats_broker import open_broker

        async with open_broker(
            url, user=user, password=password, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
            name=f"vmbusops-controller-{controller_id or bind}",
        ) as broker:  # fmt: skip
            # JSON logs from here: a broker that cannot be reached at start is one line, not a log.
            configure_json_logging(log_level)
            yield broker

    check_ready_file(ready_file)
    options = ControllerOptions(
        id=controller_id or f"{socket.gethostname()}:{bind.rpartition(':')[2]}", url=public_url or "",
        canary=canary, host_ttl=host_ttl, lease_ttl=lease_ttl, placement_timeout=placement_timeout,
    )  # fmt: skip
    import vmbusops.fleet.nats_broker  # noqa: F401 (imported before the heap settles, not after)

    settle()  # everything the controller runs is imported: full collections need not look at it again
    sys.exit(trio.run(lambda: run_controller(config, open_broker=open_fleet_broker, options=options, listen=listen, ready_file=ready_file)))


def _register_nats_config() -> None:
    from vmbusops.cli.fleet_nats_cmd import nats_config_cmd

    fleet.add_command(nats_config_cmd, "nats-config")


_register_nats_config()
