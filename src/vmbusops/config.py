"""The configuration file, ``$VMBUSOPS_HOME/config.toml``.

Everything has a default, so no file is needed. Unknown keys are errors, not ignored: a typo in
a file that decides which host the agent drives must not pass silently. ::

    [host]
    default = "sim"            # sim | sim:HOST | local | pwsh | pwsh-lab  (or VMBUSOPS_HOST, or --host)
    max_sessions = 32          # PowerShell Direct sessions one vmbusops process opens at once, all its jobs together
    max_runspaces = 64         # the host process's runspace pool; at least max_sessions + 8

    [sim]
    lab = "/path/to/lab.toml"  # or VMBUSOPS_LAB; default: the built-in lab

    [agent]                    # vmbusops agent: the HTTP API (see vmbusops.api)
    listen = "127.0.0.1:8421"  # loopback unless told otherwise
    tls_cert = "/etc/vmbusops/agent.pem"   # TLS when given; tls_key beside it
    tls_key = "/etc/vmbusops/agent.key"    # the certificate's private key (PEM)
    client_ca = "/etc/vmbusops/clients-ca.pem"  # accept client certificates signed by this CA
    submit_rate_per_minute = 30  # per token; a burst of submit_burst is allowed
    submit_burst = 10            # submissions a token may make at once before the rate applies
    max_bundle_bytes = 268435456 # the largest bundle a submission may upload (bytes)
    shutdown_grace_seconds = 30  # on SIGTERM, runs get this long to finish before they are stopped
    host_wait_seconds = 10       # a submission waits this long for a host being reopened, then 503
    host_reconnect_max_seconds = 30  # the longest wait between attempts to reopen a dead host

    [retention]                # what the journal and the bundle store keep (see vmbusops.retention)
    records_days = 30          # records of jobs finished longer ago are deleted (runs keep excerpts)
    jobs_days = 90             # finished jobs are deleted entirely after this long
    interval_minutes = 60      # how often the agent prunes (vmbusops prune does it now)
    journal_max_mb = 0         # the journal file's size limit; 0: none (only the disk's)

    [fleet]                    # vmbusops agent --fleet: join a fleet (see vmbusops.fleet.agent_config)
    url = "nats://nats.example.net:4222"   # the fleet's NATS server (nats:// or tls://); --fleet wins
    host = "hv01"              # this host's name in the fleet (default: from --host: sim:NAME's NAME, local's machine name); --fleet-host
    cluster = "c1"             # the failover cluster this host is a node of; --cluster
    user = "hv01"              # this host's NATS user (it may use its own subjects only); --fleet-user
    password_file = "/etc/vmbusops/nats.pass"  # its password (else $VMBUSOPS_NATS_PASSWORD; never a flag)
    tls_ca = "/etc/vmbusops/nats-ca.pem"       # TLS to NATS, checked against this CA; --fleet-ca
    tls_cert = "/etc/vmbusops/nats-client.pem" # a TLS client certificate for NATS, with tls_key; --fleet-cert
    tls_key = "/etc/vmbusops/nats-client.key"  # its private key (PEM); --fleet-key
    heartbeat_seconds = 1      # how often the host entry is written
    host_ttl_seconds = 10      # no heartbeat written for this long: this host's fleet runs are cancelled
    list_seconds = 5           # how often the host's VMs are listed and their placement written (at most host_ttl_seconds / 2)

    [credentials]
    key_file = "/etc/vmbusops/credentials.key"  # the guest credentials' sealing key, kept outside
                               # the home (default: systemd's $CREDENTIALS_DIRECTORY, else the home)

    [hosts.hv01]               # remote hosts by name: --host hv01 (see vmbusops.inventory)
    transport = "ssh"
    address = "svc-vmbusops@hv01.example.net"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbusops.errors import ConfigError
from vmbusops.fleet.agent_config import FLEET_KEYS, FleetConfig, parse_fleet_section
from vmbusops.home import home_dir
from vmbusops.inventory import HostEntry, parse_hosts

ENV_HOST = "VMBUSOPS_HOST"
ENV_LAB = "VMBUSOPS_LAB"
DEFAULT_LISTEN = "127.0.0.1:8421"
#: Invoke-Command's own default ThrottleLimit. Each open PowerShell Direct session holds a runspace
#: in the host's PowerShell process and a remoting process in the guest, so the host's memory
#: grows with it: raise it with the host's memory in mind.
DEFAULT_MAX_SESSIONS = 32
MAX_SESSIONS_LIMIT = 1024
#: Runspaces beyond the sessions, so host-side commands (Get-VM, Copy-VMFile) never queue behind
#: guest sessions that hold every runspace.
HOST_COMMAND_RUNSPACES = 8

_KNOWN: dict[str, set[str]] = {
    "host": {"default", "max_runspaces", "max_sessions"},
    "sim": {"lab"},
    "credentials": {"key_file"},
    "agent": {
        "listen", "tls_cert", "tls_key", "client_ca", "submit_rate_per_minute", "submit_burst",
        "max_bundle_bytes", "shutdown_grace_seconds", "host_wait_seconds", "host_reconnect_max_seconds",
    },
    "retention": {"records_days", "jobs_days", "interval_minutes", "journal_max_mb"},
    "fleet": set(FLEET_KEYS),
}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    listen: str = DEFAULT_LISTEN
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    submit_rate_per_minute: float = 30.0
    submit_burst: int = 10
    max_bundle_bytes: int = 256 << 20
    shutdown_grace_seconds: float = 30.0
    host_wait_seconds: float = 10.0
    host_reconnect_max_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    records_days: float = 30.0
    jobs_days: float = 90.0
    interval_minutes: float = 60.0
    #: 0: no limit.
    journal_max_mb: float = 0.0


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "sim"
    max_runspaces: int = 64
    #: PowerShell Direct sessions this process opens at once, across all its jobs (``[host] max_sessions``);
    #: another vmbusops process on the host has a cap of its own.
    max_sessions: int = DEFAULT_MAX_SESSIONS
    lab: str | None = None
    agent: AgentConfig = AgentConfig()
    retention: RetentionConfig = RetentionConfig()
    hosts: tuple[HostEntry, ...] = ()
    credential_key_file: str | None = None
    #: ``[fleet]``: how ``vmbusops agent --fleet`` joins a fleet (see :mod:`vmbusops.fleet.agent_config`).
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def host_entry(self, name: str) -> HostEntry | None:
        """The inventory's ``[hosts.NAME]`` entry, if there is one."""
        for entry in self.hosts:
            if entry.name == name:
                return entry
        return None

    @property
    def pool_runspaces(self) -> int:
        """The runspace pool to open on the host: room for every session and for host commands."""
        return max(self.max_runspaces, self.max_sessions + HOST_COMMAND_RUNSPACES)


def load_config(path: Path | None = None) -> Config:
    path = path or home_dir() / "config.toml"
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    hosts = parse_hosts(path, raw.pop("hosts", {}))
    for section, body in raw.items():
        if section not in _KNOWN or not isinstance(body, dict):
            raise ConfigError(
                f"{path}: unknown section [{section}]", hint=f"known: {', '.join(sorted(_KNOWN))}, hosts.NAME"
            )
        unknown = set(body) - _KNOWN[section]
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))}",
                hint=f"known: {', '.join(sorted(_KNOWN[section]))}",
            )
    host_section = raw.get("host", {})
    sim_section = raw.get("sim", {})
    host = os.environ.get(ENV_HOST) or host_section.get("default", "sim")
    lab = os.environ.get(ENV_LAB) or sim_section.get("lab")
    max_runspaces = host_section.get("max_runspaces", 64)
    if not isinstance(max_runspaces, int) or not 1 <= max_runspaces <= 1024:
        raise ConfigError(f"{path}: [host] max_runspaces must be a whole number from 1 to 1024")
    max_sessions = host_section.get("max_sessions", DEFAULT_MAX_SESSIONS)
    whole = isinstance(max_sessions, int) and not isinstance(max_sessions, bool)
    if not whole or not 1 <= max_sessions <= MAX_SESSIONS_LIMIT:
        raise ConfigError(
            f"{path}: [host] max_sessions must be a whole number from 1 to {MAX_SESSIONS_LIMIT}"
        )
    agent = _agent_config(raw.get("agent", {}), path)
    retention = _retention_config(raw.get("retention", {}), path)
    key_file = raw.get("credentials", {}).get("key_file")
    if key_file is not None and (not isinstance(key_file, str) or not os.path.isabs(key_file)):
        raise ConfigError(f"{path}: [credentials] key_file must be an absolute path")
    return Config(
        host=str(host), max_runspaces=max_runspaces, max_sessions=max_sessions, lab=str(lab) if lab else None, agent=agent,
        retention=retention, hosts=hosts, credential_key_file=key_file,
        fleet=parse_fleet_section(raw.get("fleet", {}), path),
    )  # fmt: skip


def _retention_config(section: dict[str, Any], path: Path) -> RetentionConfig:
    def number(key: str, default: float, low: float, high: float) -> float:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ConfigError(f"{path}: [retention] {key} must be a number from {low:g} to {high:g}")
        return float(value)

    return RetentionConfig(
        records_days=number("records_days", 30, 0, 36500),
        jobs_days=number("jobs_days", 90, 0, 36500),
        interval_minutes=number("interval_minutes", 60, 1, 10080),
        journal_max_mb=number("journal_max_mb", 0, 0, 1 << 30),
    )


def _agent_config(section: dict[str, Any], path: Path) -> AgentConfig:
    def number(key: str, default: float, low: float, high: float) -> float:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ConfigError(f"{path}: [agent] {key} must be a number from {low:g} to {high:g}")
        return float(value)

    def text(key: str, default: str | None) -> str | None:
        value = section.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: [agent] {key} must be a string")
        return value

    tls_cert, tls_key = text("tls_cert", None), text("tls_key", None)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError(f"{path}: [agent] tls_cert and tls_key go together")
    client_ca = text("client_ca", None)
    if client_ca is not None and tls_cert is None:
        raise ConfigError(f"{path}: [agent] client_ca needs tls_cert and tls_key")
    return AgentConfig(
        listen=text("listen", DEFAULT_LISTEN) or DEFAULT_LISTEN,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        submit_rate_per_minute=number("submit_rate_per_minute", 30, 0.01, 1e6),
        submit_burst=int(number("submit_burst", 10, 1, 1e6)),
        max_bundle_bytes=int(number("max_bundle_bytes", 256 << 20, 1024, 1 << 40)),
        shutdown_grace_seconds=number("shutdown_grace_seconds", 30, 0, 86400),
        host_wait_seconds=number("host_wait_seconds", 10, 0, 300),
        host_reconnect_max_seconds=number("host_reconnect_max_seconds", 30, 0.05, 3600),
    )
