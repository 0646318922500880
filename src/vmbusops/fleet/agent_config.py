"""How ``vmbusops agent`` joins a fleet: the ``[fleet]`` section and ``--fleet`` options.

::

    [fleet]                          # vmbusops agent --fleet: join a fleet over NATS JetStream
    url = "nats://nats.example.net:4222"   # or tls://...; --fleet URL
    host = "hv01"                    # this host's fleet name (default: the configured host's name)
    cluster = "c1"                   # its failover cluster, if any
    user = "hv01"                    # its NATS user (may only use its own subjects)
    password_file = "/etc/vmbusops/nats.pass"  # or $VMBUSOPS_NATS_PASSWORD; never on the command line
    tls_ca = "/etc/vmbusops/nats-ca.pem"       # TLS to NATS when given (or a tls:// URL)
    tls_cert = "/etc/vmbusops/nats-client.pem" # a client certificate, with tls_key
    tls_key = "/etc/vmbusops/nats-client.key"
    heartbeat_seconds = 1            # how often the host entry is written
    host_ttl_seconds = 10            # no heartbeat written for this long: this host's fleet runs stop
    list_seconds = 5                 # how often the VMs are listed (Get-VM); at most host_ttl_seconds / 2

The command line's options win over the section. The password is read from
``VMBUSOPS_NATS_PASSWORD`` or the password file, never from a flag or the URL, so it is not in
the process list or a shell's history.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmbusops.errors import ConfigError
from vmbusops.fleet.names import check_host_name
from vmbusops.urls import shown_url

ENV_NATS_PASSWORD = "VMBUSOPS_NATS_PASSWORD"  # noqa: S105 - the variable's name, not a password
FLEET_KEYS = frozenset({
    "url", "host", "cluster", "user", "password_file", "tls_ca", "tls_cert", "tls_key", "heartbeat_seconds",
    "host_ttl_seconds", "list_seconds",
})  # fmt: skip
_SCHEMES = ("nats", "tls")


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    url: str | None = None
    host: str | None = None
    cluster: str | None = None
    user: str | None = None
    password_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    heartbeat_seconds: float = 1.0
    host_ttl_seconds: float = 10.0
    list_seconds: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetJoin:
    """Everything the agent needs to join: checked, the password read."""

    url: str
    host: str
    cluster: str | None
    user: str | None
    password: str | None = field(repr=False)
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    heartbeat: float
    host_ttl: float
    list_every: float = 5.0


def parse_fleet_section(section: dict[str, Any], path: Path) -> FleetConfig:
    def text(key: str) -> str | None:
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{path}: [fleet] {key} must be a non-empty string")
        return value

    def number(key: str, default: float, low: float, high: float) -> float:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ConfigError(f"{path}: [fleet] {key} must be a number from {low:g} to {high:g}")
        return float(value)

    return FleetConfig(
        url=text("url"), host=text("host"), cluster=text("cluster"), user=text("user"),
        password_file=text("password_file"), tls_ca=text("tls_ca"), tls_cert=text("tls_cert"),
        tls_key=text("tls_key"), heartbeat_seconds=number("heartbeat_seconds", 1.0, 0.05, 60),
        host_ttl_seconds=number("host_ttl_seconds", 10.0, 0.5, 3600),
        list_seconds=number("list_seconds", 5.0, 0.05, 3600),
    )  # fmt: skip


#: The options an agent gives the broker's URL, user and password file with; ``fleet serve`` has its own.
AGENT_URL_OPTIONS = ("--fleet", "--fleet-user", "--fleet-password-file")


def check_url(url: str, options: tuple[str, str, str] = AGENT_URL_OPTIONS) -> str:
    """``url`` if it names a NATS server (nats:// or tls://, a host, a port if any), else the
    usage error, in the words of the command's own ``options`` (URL, user, password file); a
    URL that carries a password is refused (it would show in the process list), and no message
    quotes the password."""
    option, user_option, password_option = options
    shown = shown_url(url)
    example = "for example nats://127.0.0.1:4222"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad {option} URL {shown!r}: {str(exc).replace(url, shown)}", hint=example) from None
    if parts.scheme not in _SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"bad {option} URL {shown!r}: expected nats://HOST[:PORT] or tls://HOST[:PORT]", hint=example)
    if port == 0:
        raise ConfigError(f"bad {option} URL {shown!r}: port 0", hint=example)
    if parts.password is not None:
        raise ConfigError(
            f"the {option} URL carries a password",
            hint=f"give the user with {user_option} and the password in ${ENV_NATS_PASSWORD} or {password_option}",
        )
    return url


def host_name_of(host: str) -> str:
    """The fleet host name an agent takes from its ``--host`` when none is given: the simulated
    host's for ``sim:HOST``, the machine's own (its first label) for ``local`` (every Hyper-V
    host's agent runs ``--host local``; naming them all "local" would make them one host), the
    remote machine's (its first label) for ``ssh://`` and ``winrm://``; else the name as given."""
    kind, sep, rest = host.partition(":")
    if sep and kind == "sim" and rest:
        return rest
    if host == "local":
        return socket.gethostname().partition(".")[0] or host
    if host.startswith(("ssh://", "winrm://", "winrms://")):
        remote = urlsplit(host).hostname
        if remote:
            return remote.partition(".")[0] if not remote.replace(".", "").isdigit() else remote.replace(".", "-")
    return host


def fleet_join(
    section: FleetConfig,
    *,
    url: str | None,
    host: str | None,
    default_host: str,
    cluster: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> FleetJoin:
    """The options over the section, checked; the password from the environment or its file."""
    given: dict[str, Any] = {
        "url": url, "host": host, "cluster": cluster, "user": user, "password_file": password_file,
        "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key,
    }  # fmt: skip
    merged = dataclasses.replace(section, **{k: v for k, v in given.items() if v is not None})
    if merged.url is None:
        raise ConfigError("no fleet URL", hint="pass --fleet nats://HOST:PORT or set [fleet] url")
    if merged.host is not None:
        name = check_host_name(merged.host)
    else:
        derived = host_name_of(default_host)
        try:
            name = check_host_name(derived)
        except ConfigError:
            raise ConfigError(
                f"this host's fleet name would be {derived!r} (from --host {default_host}), which is not valid",
                hint="name it with --fleet-host NAME or [fleet] host: 1 to 64 letters, digits, '-' or '_'",
            ) from None
    if merged.cluster is not None:
        check_host_name(merged.cluster)
    if (merged.tls_cert is None) != (merged.tls_key is None):
        raise ConfigError("--fleet-cert and --fleet-key go together", hint="give both, or neither")
    password = os.environ.get(ENV_NATS_PASSWORD) or None
    if merged.password_file is not None:
        try:
            password = Path(merged.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the NATS password file {merged.password_file}: {exc.strerror}") from None
        if not password:
            raise ConfigError(f"the NATS password file {merged.password_file} is empty")
    if password is not None and merged.user is None:
        raise ConfigError("a NATS password without a user", hint="give the user with --fleet-user or [fleet] user")
    if merged.host_ttl_seconds <= merged.heartbeat_seconds:
        raise ConfigError("[fleet] host_ttl_seconds must be longer than heartbeat_seconds")
    return FleetJoin(
        url=check_url(merged.url), host=name, cluster=merged.cluster, user=merged.user, password=password,
        tls_ca=merged.tls_ca, tls_cert=merged.tls_cert, tls_key=merged.tls_key,
        heartbeat=merged.heartbeat_seconds, host_ttl=merged.host_ttl_seconds, list_every=merged.list_seconds,
    )  # fmt: skip


__all__ = ["AGENT_URL_OPTIONS", "ENV_NATS_PASSWORD", "FLEET_KEYS", "FleetConfig", "FleetJoin", "check_url", "fleet_join", "host_name_of", "parse_fleet_section", "shown_url"]
