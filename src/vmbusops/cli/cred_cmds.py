"""``vmbusops cred``: the local encrypted store of guest credentials."""

from __future__ import annotations

import sys

import click

from vmbusops.credentials import CredentialStore, Secret, check_reference
from vmbusops.errors import CredentialStoreError


@click.group("cred")
def cred() -> None:
    """Guest credentials, encrypted at rest under $VMBUSOPS_HOME. Passwords are never arguments."""


@cred.command("set")
@click.argument("name")
@click.option("--username", "-u", required=True, help="Guest user name, e.g. Administrator or DOMAIN\\user.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (first line).")
def cred_set(name: str, username: str, password_stdin: bool) -> None:
    """Store (or replace) credential NAME; the password is read without echo, or from stdin."""
    check_reference(name)
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise CredentialStoreError("empty password refused")
    CredentialStore().set(name, username, Secret(password))
    click.echo(f"stored credential {name!r} for {username}")


@cred.command("list")
def cred_list() -> None:
    """Credential references and their user names (never passwords)."""
    for name, username in CredentialStore().names():
        click.echo(f"{name}\t{username}")


@cred.command("remove")
@click.argument("name")
def cred_remove(name: str) -> None:
    """Forget credential NAME."""
    if not CredentialStore().remove(name):
        raise CredentialStoreError(f"no credential named {name!r}")
    click.echo(f"removed credential {name!r}")
