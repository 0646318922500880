"""The host inventory: ``[hosts.NAME]`` tables of config.toml.

Each entry says how to reach one Hyper-V host (transport, address, trust, staging folder) and
names its credential in the encrypted store - never a secret itself. ``--host NAME`` anywhere a
host is accepted picks an entry; ``vmbusops hosts`` checks them all. ::

    [hosts.hv01]
    transport = "ssh"                          # ssh | winrm | sim | local | pwsh | pwsh-lab
    address = "svc-vmbusops@hv01.example.net:22"  # ssh: [user@]host[:port]; winrm: host or URL
    known_host_key = "ssh-ed25519 AAAA..."     # optional pin; default: ~/.ssh/known_hosts
    known_hosts = "/etc/vmbusops/known_hosts"  # ssh: the known_hosts file (default ~/.ssh/known_hosts)
    identity_file = "~/.ssh/vmbusops_ed25519"  # optional; default: the agent and ~/.ssh/id_*
    use_agent = true                           # ssh: offer the SSH agent's keys (true or false)
    subsystem = "vmbusops"                     # optional; default "powershell"
    staging_dir = 'D:\\vmbusops\\staging'        # where files for Copy-VMFile are staged on the
                                               # host (default C:\\ProgramData\\vmbusops\\staging)

    [hosts.hv02]
    transport = "winrm"
    address = "hv02.example.net"               # or https://hv02.example.net:5986/wsman
    credential = "hv02-svc"                    # a reference in the credential store
    auth = "negotiate"                         # negotiate | ntlm | kerberos | certificate
    configuration_name = "VmbusOps"            # the JEA endpoint (host_agent/)
    cert_validation = true                     # HTTPS: true (system CAs), a CA bundle path, or
                                               # false (labs only; says so loudly)
    client_certificate = "/etc/vmbusops/hv02.pem"  # auth = "certificate": the client certificate
    client_key = "/etc/vmbusops/hv02.key"      # and its key
    encryption = "auto"                        # message encryption over HTTP: auto | always | never
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vmbusops.errors import ConfigError

HOST_TRANSPORTS: Final = ("ssh", "winrm", "sim", "local", "pwsh", "pwsh-lab")
HOST_KEYS: Final = frozenset(
    {
        "transport", "address", "credential", "known_hosts", "known_host_key", "identity_file",
        "use_agent", "staging_dir", "auth", "cert_validation", "client_certificate", "client_key",
        "encryption", "configuration_name", "subsystem",
    }
)
WINRM_AUTH: Final = ("negotiate", "ntlm", "kerberos", "certificate")
WINRM_ENCRYPTION: Final = ("auto", "always", "never")
_BOOL_KEYS: Final = ("use_agent",)


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One host of the inventory."""

    name: str
    transport: str
    address: str = ""
    credential: str | None = None
    known_hosts: str | None = None
    known_host_key: str | None = None
    identity_file: str | None = None
    use_agent: bool = True
    staging_dir: str | None = None
    auth: str = "negotiate"
    cert_validation: bool | str = True
    """True (system CAs), a CA bundle path, or False (only for labs; says so loudly)."""
    client_certificate: str | None = None
    client_key: str | None = None
    encryption: str = "auto"
    configuration_name: str | None = None
    subsystem: str | None = None
    """SSH: the subsystem to open (``powershell``; ``vmbusops`` for the JEA one in host_agent/)."""


def parse_hosts(path: Path, raw: Any) -> tuple[HostEntry, ...]:
    """The ``hosts`` table of a parsed config.toml, checked as strictly as the rest."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [hosts] must hold tables, one per host: [hosts.NAME]")
    entries: list[HostEntry] = []
    for name, body in raw.items():
        where = f"{path}: [hosts.{name}]"
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a table")
        if name in HOST_TRANSPORTS or "://" in name:
            raise ConfigError(f"{where}: a host name cannot be a transport or an address")
        unknown = set(body) - HOST_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s): {', '.join(sorted(unknown))}",
                hint=f"known: {', '.join(sorted(HOST_KEYS))}",
            )
        transport = body.get("transport")
        if transport not in HOST_TRANSPORTS:
            raise ConfigError(f"{where}: transport must be one of {', '.join(HOST_TRANSPORTS)}")
        if transport in ("ssh", "winrm") and not isinstance(body.get("address"), str):
            raise ConfigError(f"{where}: a {transport} host needs an address")
        for key in _BOOL_KEYS:
            if key in body and not isinstance(body[key], bool):
                raise ConfigError(f"{where}: {key} must be true or false")
        validation = body.get("cert_validation", True)
        if not isinstance(validation, bool | str):
            raise ConfigError(f"{where}: cert_validation must be true, false or a CA bundle path")
        text = {k: v for k, v in body.items() if k not in (*_BOOL_KEYS, "cert_validation")}
        bad = sorted(k for k, v in text.items() if not isinstance(v, str))
        if bad:
            raise ConfigError(f"{where}: {', '.join(bad)} must be text")
        if text.get("auth", "negotiate") not in WINRM_AUTH:
            raise ConfigError(f"{where}: auth must be one of {', '.join(WINRM_AUTH)}")
        if text.get("encryption", "auto") not in WINRM_ENCRYPTION:
            raise ConfigError(f"{where}: encryption must be one of {', '.join(WINRM_ENCRYPTION)}")
        entries.append(
            HostEntry(
                name=str(name),
                use_agent=bool(body.get("use_agent", True)),
                cert_validation=validation,
                **text,
            )
        )
    return tuple(entries)
