"""The configuration file, ``$VMBUSOPS_HOME/config.toml``.

Everything has a default, so no file is needed. Unknown keys are errors, not ignored: a typo in
a file that decides which host the agent drives must not pass silently. ::

    [host]
    default = "sim"            # sim | local | pwsh  (or VMBUSOPS_HOST, or --host)
    max_runspaces = 64

    [sim]
    lab = "/path/to/lab.toml"  # or VMBUSOPS_LAB; default: the built-in lab

    [hosts.hv01]               # remote hosts by name: --host hv01 (see vmbusops.inventory)
    transport = "ssh"
    address = "svc-vmbusops@hv01.example.net"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbusops.errors import ConfigError
from vmbusops.home import home_dir
from vmbusops.inventory import HostEntry, parse_hosts

ENV_HOST = "VMBUSOPS_HOST"
ENV_LAB = "VMBUSOPS_LAB"

_KNOWN: dict[str, set[str]] = {
    "host": {"default", "max_runspaces"},
    "sim": {"lab"},
}


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "sim"
    max_runspaces: int = 64
    lab: str | None = None
    hosts: tuple[HostEntry, ...] = ()

    def host_entry(self, name: str) -> HostEntry | None:
        """The inventory's ``[hosts.NAME]`` entry, if there is one."""
        for entry in self.hosts:
            if entry.name == name:
                return entry
        return None


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
    return Config(host=str(host), max_runspaces=max_runspaces, lab=str(lab) if lab else None, hosts=hosts)
