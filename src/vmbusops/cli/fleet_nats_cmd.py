"""``vmbusops fleet nats-config``: print a nats-server configuration for a fleet.

One account with JetStream; the controller's user may do anything, each Hyper-V host's user only
what :func:`vmbusops.fleet.natsserver.fleet_permissions` lists (its own facts, its own work, its
own host entry, placement, reading bundles). The passwords are not in the file: each is read by
the server from an environment variable when it starts (``$VMBUSOPS_NATS_PASSWORD_<USER>``), so
the configuration can be printed, stored and reviewed without a secret in it.
"""

from __future__ import annotations

import re

import click

from vmbusops.errors import ConfigError
from vmbusops.fleet import names
from vmbusops.fleet.natsserver import EnvRef, TlsFiles, fleet_permissions, render_conf, server_config


def password_variable(user: str) -> str:
    """The environment variable the server reads ``user``'s password from."""
    return "VMBUSOPS_NATS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def fleet_nats_config(
    hosts: list[str],
    *,
    controller_user: str = "controller",
    listen: str = "0.0.0.0:4222",
    store_dir: str = "/var/lib/nats",
    tls: TlsFiles | None = None,
) -> str:
    """The configuration text (with a header saying which variables hold the passwords)."""
    for host in hosts:
        names.check_host_name(host)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", controller_user):
        raise ConfigError(
            f"controller user {controller_user!r} is not valid",
            hint="use 1 to 64 letters, digits, '-' or '_'",
        )
    users = [controller_user, *dict.fromkeys(hosts)]
    try:
        perms = fleet_permissions(controller_user, users[1:])
    except ValueError as exc:
        raise ConfigError(str(exc), hint="give the controller user a name no host has") from exc
    variables: dict[str, str] = {}
    for user in users:
        var = password_variable(user)
        if var in variables:
            raise ConfigError(
                f"the users {variables[var]!r} and {user!r} would share the password variable {var}",
                hint="give the hosts names that differ by more than case or '-' versus '_'",
            )
        variables[var] = user
    conf = server_config(
        listen=listen,
        store_dir=store_dir,
        users={user: EnvRef(password_variable(user)) for user in users},
        permissions=perms,
        tls=tls,
    )
    header = [
        "# nats-server configuration for a vmbusops fleet (vmbusops fleet nats-config).",
        "# The server reads each user's password from its environment when it starts:",
        *(f"#   {var}  (user {user})" for var, user in variables.items()),
        "# Each host's user may publish only its own facts, take only its own work, write only",
        "# its own host entry and any VM's placement (a VM may move to its host; each write is",
        "# a compare-and-set); the controller's user may do anything.",
    ]
    return "\n".join(header) + "\n" + render_conf(conf) + "\n"


@click.command("nats-config")
@click.option(
    "--host", "hosts", multiple=True, required=True, metavar="NAME",
    help="A Hyper-V host of the fleet (repeat for each); its NATS user has its name.",
)  # fmt: skip
@click.option("--controller-user", default="controller", show_default=True, help="The controllers' NATS user.")
@click.option("--listen", default="0.0.0.0:4222", show_default=True, help="Address and port the server listens on.")
@click.option("--store-dir", default="/var/lib/nats", show_default=True, help="JetStream's store directory.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="The server's TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key (PEM).")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="A CA that client certificates must chain to.")
def nats_config_cmd(
    hosts: tuple[str, ...],
    controller_user: str,
    listen: str,
    store_dir: str,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> None:
    """Print a nats-server configuration for a fleet: JetStream, and one user per host that may
    use only its own subjects. No password is in it: set the variables the header lists."""
    from pathlib import Path

    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together", hint="give both, or neither")
    tls = None
    if tls_cert and tls_key:
        ca = Path(tls_ca) if tls_ca else None
        tls = TlsFiles(cert=Path(tls_cert), key=Path(tls_key), ca=ca, verify_clients=ca is not None)
    elif tls_ca:
        raise ConfigError("--tls-ca needs --tls-cert and --tls-key", hint="give all three")
    click.echo(
        fleet_nats_config(
            list(hosts), controller_user=controller_user, listen=listen, store_dir=store_dir, tls=tls
        ),
        nl=False,
    )
