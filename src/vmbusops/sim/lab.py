"""The lab file: which VMs the simulated Hyper-V host has and how they behave.

A lab is TOML::

    [host]
    name = "HV-SIM01"            # the host's computer name
    session_open_ms = 0          # cost of opening one PowerShell Direct session
    boot_seconds = 3.0           # how long a (re)started guest answers NoContact
    password_seed = "..."        # guest passwords are derived from this (see lab_password)
    crash_on = "Copy-VMFile"     # chaos: the process exits abruptly when this cmdlet starts
    garbage_on = "Get-VM"        # chaos: non-protocol bytes are written to stdout when it starts
    malformed_on = "Get-VM"      # chaos: it answers with a framed PSRP message that is not XML

    [[hosts]]                    # a fleet: several simulated hosts over one lab and one state
    name = "HV-A"                # a host's name, [A-Za-z0-9_-]{1,64}; python -m vmbusops.sim --as HV-A
                                 # (host spec sim:HV-A) serves it. Without [[hosts]] the lab has one
                                 # host, [host] name; with them [host] keeps only the defaults
    cluster = "CL1"              # the failover cluster it is a node of: VMs live-migrate and fail
                                 # over between nodes of one cluster (default: none, a lone host)
    prefix = "HV-"               # instead of name: count hosts named HV-01, HV-02, ...
    count = 20                   # how many hosts this entry declares with prefix (default 1)

    [[vm]]
    name = "web01"               # the VM's name (required; unique, case-insensitively)
    host = "HV-A"                # the host that owns it at first (default: the lab's first host)
    id = "GUID"                  # optional; derived from the name when absent
    state = "Running"            # Running | Off | Saved | Paused
    heartbeat = "OkApplicationsHealthy"  # the Heartbeat integration service's status (a running
                                 # VM's default; none when it is not running)
    guest_services = true        # the Guest Service Interface integration service
    username = "Administrator"   # the guest account the lab's password belongs to
    password = "..."             # optional; lab_password() otherwise
    latency_ms = 0               # added before every Invoke-Command in this guest
    notes = ""                   # Get-VM's Notes
    computer_name = "WEB01"      # $env:COMPUTERNAME / hostname in the guest
    services = [{ name = "W3SVC", display_name = "...", status = "Running" }]
                                 # Get-Service in the guest; status Running or Stopped
    processes = [{ name = "w3wp", id = 4120 }]  # Get-Process in the guest
    hotfixes = [{ id = "KB5034439", description = "Security Update", installed_on = "2024-01-09" }]
                                 # Get-HotFix in the guest: updates already installed
    features = [{ name = "Web-Server", installed = false, restart = false }]  # WindowsFeature (DSC);
                                 # install_seconds = 2.0 is how long installing one takes
    updates = [{ kb = "KB5034441", title = "...", categories = ["Security Updates"], restart = true }]
                                 # pending updates the Windows Update Agent offers (patch steps)
    checkpoint_type = "Production"  # Get-VM's CheckpointType: Production (falls back to a standard
                                 # checkpoint when it cannot take one) | ProductionOnly | Standard | Disabled
    vss = true                   # the guest's Backup (volume shadow copy) service works; false: no
                                 # production checkpoint while the VM runs (see vmbusops.sim.checkpoints)
    memory_mb = 2048             # MemoryStartup: what a standard checkpoint of the running VM saves
    storage_free_mb = 131072     # free space on the volume holding the VM's disks and checkpoints
                                 # (each checkpoint takes some; too little: "not enough space")
    [vm.files]                   # seeded into the guest file system on first use
    'C:\\inetpub\\wwwroot\\index.html' = "..."
    [vm.faults]                  # chaos, per VM
    session_drop_after_records = 100   # PowerShell Direct session breaks after N records
    corrupt_copies = "*.psm1"          # Copy-VMFile writes damaged bytes to matching guest paths
    hang_on_restart = true             # after Restart-VM the guest never boots again
    connect_fails = true               # every PowerShell Direct session fails to open: "A failure
                                       #   occurred while attempting to connect to the target
                                       #   virtual machine."
    socket_ends_after_records = 100    # the Hyper-V socket ends after N records: "... The Hyper-V
                                       #   socket target process has ended. ..."

    [[group]]                    # listed by Get-VMGroup (see vmbusops.sim.lab_groups)
    name = "web-tier"            # unique, case-insensitively
    type = "VMCollectionType"    # VMCollectionType (members: vms) | ManagementCollectionType
                                 # (members: groups, of either type; nested ones count recursively)
    vms = ["web01"]              # a VM collection's member VMs
    groups = []                  # a management collection's member groups
    id = "GUID"                  # optional; derived from the name when absent

    [generate]                   # many identical running VMs, for benchmarks
    count = 200                  # how many (0 to 100000; default 0)
    prefix = "bench"             # named bench001, bench002... (default "vm")
    latency_ms = 0               # as for [[vm]]
    guest_services = true        # as for [[vm]] (default true here)
    hosts = ["HV-A", "HV-B"]     # spread them round robin over these hosts ("*": every host in lab
                                 # order; default: the first host)

The module only parses and validates; it never touches the state directory.
"""

from __future__ import annotations

import enum
import hashlib
import re
import tomllib
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vmbusops.errors import ConfigError
from vmbusops.sim.lab_groups import GroupSpec, parse_groups

DEFAULT_USERNAME = "Administrator"
DEFAULT_HEARTBEAT = "OkApplicationsHealthy"
#: What a host or cluster name of ``[[hosts]]`` may be (a fleet uses host names as subject tokens).
HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_HOSTS = 10_000


class VMState(enum.StrEnum):
    """Hyper-V's VMState names for the states the simulator models."""

    RUNNING = "Running"
    OFF = "Off"
    SAVED = "Saved"
    PAUSED = "Paused"


class CheckpointType(enum.StrEnum):
    """Hyper-V's CheckpointType of a VM (Set-VM -CheckpointType)."""

    DISABLED = "Disabled"
    PRODUCTION = "Production"
    PRODUCTION_ONLY = "ProductionOnly"
    STANDARD = "Standard"


class ServiceStatus(enum.StrEnum):
    RUNNING = "Running"
    STOPPED = "Stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    name: str = "HV-SIM01"
    session_open_ms: float = 0.0
    boot_seconds: float = 3.0
    # Not a secret: passwords are derived from it so that tests can compute them.
    password_seed: str = "vmbusops-lab"  # noqa: S105
    crash_on: str | None = None
    garbage_on: str | None = None
    malformed_on: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """One simulated host of the lab: its name and the failover cluster it is a node of."""

    name: str
    cluster: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    name: str
    display_name: str
    status: ServiceStatus = ServiceStatus.RUNNING


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    name: str
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HotfixSpec:
    id: str
    description: str = "Update"
    installed_on: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureSpec:
    """A Windows feature for the DSC WindowsFeature resource. ``restart`` is true (installing
    asks for a restart) or ``"always"`` (a broken install: never in desired state, always asks).
    ``install_seconds`` is how long installing or removing it takes (the LCM waits, its lines so far
    already written), as a real feature install keeps the LCM in one resource for a while."""

    name: str
    installed: bool = False
    restart: bool | str = False
    install_seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateSpec:
    """A pending Windows update that the simulated Windows Update Agent offers."""

    kb: str
    title: str
    categories: tuple[str, ...] = ("Updates",)
    restart: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    # The PowerShell Direct session breaks after this many records of one Invoke-Command.
    session_drop_after_records: int | None = None
    # Copy-VMFile damages the bytes of files whose guest path matches this glob.
    corrupt_copies: str | None = None
    # Restart-VM leaves the guest booting forever (heartbeat NoContact).
    hang_on_restart: bool = False
    # Every PowerShell Direct session to the guest fails while connecting (transient on a real host).
    connect_fails: bool = False
    # The Hyper-V socket's target process ends after this many records of one Invoke-Command.
    socket_ends_after_records: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VMSpec:
    name: str
    id: str
    state: VMState = VMState.RUNNING
    heartbeat: str | None = DEFAULT_HEARTBEAT
    guest_services: bool = False
    username: str = DEFAULT_USERNAME
    password: str | None = None
    latency_ms: float = 0.0
    notes: str = ""
    computer_name: str = ""
    files: tuple[tuple[str, str], ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    processes: tuple[ProcessSpec, ...] = ()
    hotfixes: tuple[HotfixSpec, ...] = ()
    features: tuple[FeatureSpec, ...] = ()
    updates: tuple[UpdateSpec, ...] = ()
    faults: FaultSpec = FaultSpec()
    checkpoint_type: CheckpointType = CheckpointType.PRODUCTION
    vss: bool = True
    memory_mb: float = 2048.0
    storage_free_mb: float = 131072.0
    #: The host that owns the VM when the state is new (the state then says where it is now).
    host: str = ""

    @property
    def guest_computer_name(self) -> str:
        return self.computer_name or self.name.upper()


@dataclass(frozen=True, slots=True, kw_only=True)
class Lab:
    host: HostConfig
    vms: tuple[VMSpec, ...]
    #: The simulated hosts, in lab order: ``[[hosts]]``, else the one ``[host] name``.
    hosts: tuple[HostSpec, ...]
    # Identifies the lab's content, so persisted state made from another lab is not reused.
    fingerprint: str
    source: str
    #: The lab's VM groups ([[group]]), in lab order.
    groups: tuple[GroupSpec, ...] = ()
    _by_name: dict[str, VMSpec] = field(init=False, repr=False, compare=False)
    _by_id: dict[uuid.UUID, VMSpec] = field(init=False, repr=False, compare=False)
    _hosts: dict[str, HostSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every command looks a VM up, and a generated lab has hundreds: index once.
        by_name: dict[str, VMSpec] = {}
        by_id: dict[uuid.UUID, VMSpec] = {}
        for vm in self.vms:
            by_name.setdefault(vm.name.casefold(), vm)
            by_id.setdefault(uuid.UUID(vm.id), vm)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_hosts", {h.name.casefold(): h for h in self.hosts})

    def find_host(self, name: str) -> HostSpec | None:
        """The host with that name (host names are case-insensitive, as Windows computer names)."""
        return self._hosts.get(name.casefold())

    def find(self, name: str) -> VMSpec | None:
        """The VM with that name (Hyper-V names are case-insensitive)."""
        return self._by_name.get(name.casefold())

    def find_by_id(self, vm_id: str) -> VMSpec | None:
        try:
            wanted = uuid.UUID(str(vm_id))
        except ValueError:
            return None
        return self._by_id.get(wanted)

    def credential(self, vm_name: str) -> tuple[str, str]:
        """(username, password) that the guest accepts."""
        vm = self.find(vm_name)
        if vm is None:
            raise ConfigError(f"the lab has no VM named {vm_name!r}")
        return vm.username, lab_password(self, vm.name)


def lab_admin_password(lab: Lab) -> str:
    """The lab administrator's password, which every guest accepts unless it sets its own.

    Derived from the seed so that a test or the demo can compute it and no password sits in a
    file. One password for the whole lab, as a provider's image-built guests usually have; a
    guest with ``password = "..."`` differs, which is how a lab shows a wrong-credential case.
    """
    digest = hashlib.sha256(f"{lab.host.password_seed}:administrator".encode()).hexdigest()
    return f"Lab!{digest[:16]}"


def lab_password(lab: Lab, vm_name: str) -> str:
    """The password a lab guest accepts: explicit in the lab file, else the lab admin's."""
    vm = lab.find(vm_name)
    if vm is not None and vm.password is not None:
        return vm.password
    return lab_admin_password(lab)


def default_lab_text() -> str:
    return resources.files("vmbusops.sim").joinpath("default_lab.toml").read_text(encoding="utf-8")


def load_lab(path: str | Path | None = None) -> Lab:
    """Read and validate a lab file; the shipped default lab when ``path`` is None."""
    if path is None:
        return parse_lab(default_lab_text(), source="<default lab>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read lab file {p}: {exc.strerror}") from exc
    return parse_lab(text, source=str(p))


def parse_lab(text: str, *, source: str = "<lab>") -> Lab:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"lab file {source} is not valid TOML: {exc}") from exc
    _only_keys(raw, TOP_KEYS, source)
    host_table = _table(raw.get("host", {}), "host", source)
    host = _parse_host(host_table, source)
    if "hosts" in raw:
        if "name" in host_table:
            raise ConfigError(
                f"lab file {source}: [host] name names the one host of a single-host lab; with [[hosts]], "
                "name each host there ([host] keeps the defaults: session_open_ms, boot_seconds, ...)"
            )
        hosts = _parse_hosts(_list(raw["hosts"], "hosts", source), source)
    else:
        hosts = (HostSpec(name=host.name),)
    vms: list[VMSpec] = [
        _parse_vm(_table(item, "vm", source), source, hosts)
        for item in _list(raw.get("vm", []), "vm", source)
    ]
    if "generate" in raw:
        vms.extend(_generate(_table(raw["generate"], "generate", source), source, hosts))
    seen: set[str] = set()
    for vm in vms:
        key = vm.name.casefold()
        if key in seen:
            raise ConfigError(f"lab file {source}: VM name {vm.name!r} appears twice")
        seen.add(key)
    return Lab(
        host=host,
        vms=tuple(vms),
        hosts=hosts,
        fingerprint=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        source=source,
        groups=parse_groups(raw.get("group", []), [vm.name for vm in vms], source),
    )


def _parse_host(raw: dict[str, Any], source: str) -> HostConfig:
    _only_keys(raw, HOST_KEYS, f"{source} [host]")
    return HostConfig(
        name=_str(raw.get("name", "HV-SIM01"), "host.name", source),
        session_open_ms=_num(raw.get("session_open_ms", 0), "host.session_open_ms", source),
        boot_seconds=_num(raw.get("boot_seconds", 3.0), "host.boot_seconds", source),
        password_seed=_str(raw.get("password_seed", "vmbusops-lab"), "host.password_seed", source),
        crash_on=_opt_str(raw.get("crash_on"), "host.crash_on", source),
        garbage_on=_opt_str(raw.get("garbage_on"), "host.garbage_on", source),
        malformed_on=_opt_str(raw.get("malformed_on"), "host.malformed_on", source),
    )


#: The keys each table of a lab file may have (anything else is an error); vmbusops.reference
#: documents exactly these.
TOP_KEYS = {"host", "hosts", "vm", "generate", "group"}
HOST_KEYS = {
    "name", "session_open_ms", "boot_seconds", "password_seed", "crash_on", "garbage_on", "malformed_on",
}  # fmt: skip
FAULT_KEYS = {
    "session_drop_after_records", "corrupt_copies", "hang_on_restart", "connect_fails", "socket_ends_after_records",
}  # fmt: skip
GENERATE_KEYS = {"count", "prefix", "latency_ms", "guest_services", "hosts"}
HOSTS_KEYS = {"name", "cluster", "prefix", "count"}
VM_KEYS = {
    "name",
    "host",
    "id",
    "state",
    "heartbeat",
    "guest_services",
    "username",
    "password",
    "latency_ms",
    "notes",
    "computer_name",
    "files",
    "services",
    "processes",
    "hotfixes",
    "features",
    "updates",
    "faults",
    "checkpoint_type",
    "vss",
    "memory_mb",
    "storage_free_mb",
}


def _parse_hosts(items: list[Any], source: str) -> tuple[HostSpec, ...]:
    hosts: list[HostSpec] = []
    for item in items:
        raw = _table(item, "hosts", source)
        _only_keys(raw, HOSTS_KEYS, f"{source} [[hosts]]")
        cluster = raw.get("cluster")
        if cluster is not None:
            cluster = _host_name(cluster, "hosts.cluster", source)
        if "prefix" in raw:
            if "name" in raw:
                raise ConfigError(f"lab file {source}: a [[hosts]] entry has a name or a prefix, not both")
            prefix = _str(raw["prefix"], "hosts.prefix", source)
            count = raw.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_HOSTS:
                raise ConfigError(f"lab file {source}: hosts.count must be a whole number from 1 to {MAX_HOSTS}")
            width = max(2, len(str(count)))
            names = [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]
        else:
            if "count" in raw:
                raise ConfigError(f"lab file {source}: hosts.count goes with a prefix (hosts named PREFIX01, ...)")
            names = [_str(raw.get("name"), "hosts.name", source)]
        hosts.extend(HostSpec(name=_host_name(n, "hosts.name", source), cluster=cluster) for n in names)
    if not hosts:
        raise ConfigError(f"lab file {source}: hosts is empty; declare at least one [[hosts]] entry")
    if len(hosts) > MAX_HOSTS:
        raise ConfigError(f"lab file {source}: more than {MAX_HOSTS} hosts")
    seen: set[str] = set()
    for h in hosts:
        if h.name.casefold() in seen:
            raise ConfigError(f"lab file {source}: host name {h.name!r} appears twice")
        seen.add(h.name.casefold())
    return tuple(hosts)


def _host_name(value: Any, what: str, source: str) -> str:
    if not isinstance(value, str) or HOST_NAME.fullmatch(value) is None:
        raise ConfigError(
            f"lab file {source}: {what} must be 1 to 64 letters, digits, '-' or '_', not {value!r}"
        )
    return value


def _owner(value: Any, hosts: tuple[HostSpec, ...], where: str) -> str:
    """The lab's spelling of the host a VM names (the first host when it names none)."""
    if value is None:
        return hosts[0].name
    if isinstance(value, str):
        for h in hosts:
            if h.name.casefold() == value.casefold():
                return h.name
    raise ConfigError(
        f"{where}: host {value!r} is not a host of this lab",
        hint=f"the lab's hosts: {_some_hosts(hosts)} (declare more with [[hosts]])",
    )


def _some_hosts(hosts: tuple[HostSpec, ...]) -> str:
    names = [h.name for h in hosts[:10]]
    return ", ".join(names) + (f" and {len(hosts) - 10} more" if len(hosts) > 10 else "")


def _parse_vm(raw: dict[str, Any], source: str, hosts: tuple[HostSpec, ...]) -> VMSpec:
    name = _str(raw.get("name"), "vm.name", source)
    where = f"{source} [[vm]] {name!r}"
    _only_keys(raw, VM_KEYS, where)
    owner = _owner(raw.get("host"), hosts, where)
    try:
        state = VMState(raw.get("state", "Running"))
    except ValueError:
        raise ConfigError(
            f"{where}: state must be one of {', '.join(s.value for s in VMState)}, not {raw.get('state')!r}"
        ) from None
    vm_id = raw.get("id")
    if vm_id is None:
        # Stable across runs so a VMId seen once keeps meaning the same VM.
        vm_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmbusops-sim:{name.casefold()}"))
    try:
        vm_id = str(uuid.UUID(str(vm_id)))
    except ValueError:
        raise ConfigError(f"{where}: id {vm_id!r} is not a GUID") from None
    heartbeat = raw.get("heartbeat", DEFAULT_HEARTBEAT if state is VMState.RUNNING else None)
    files = _table(raw.get("files", {}), "vm.files", source)
    faults = _table(raw.get("faults", {}), "vm.faults", source)
    _only_keys(faults, FAULT_KEYS, f"{where} faults")
    try:
        checkpoint_type = CheckpointType(raw.get("checkpoint_type", "Production"))
    except ValueError:
        raise ConfigError(
            f"{where}: checkpoint_type must be one of {', '.join(c.value for c in CheckpointType)}, "
            f"not {raw.get('checkpoint_type')!r}"
        ) from None
    drop = faults.get("session_drop_after_records")
    socket_ends = faults.get("socket_ends_after_records")
    return VMSpec(
        name=name,
        id=vm_id,
        host=owner,
        state=state,
        heartbeat=_opt_str(heartbeat, "vm.heartbeat", source),
        guest_services=bool(raw.get("guest_services", False)),
        username=_str(raw.get("username", DEFAULT_USERNAME), "vm.username", source),
        password=_opt_str(raw.get("password"), "vm.password", source),
        latency_ms=_num(raw.get("latency_ms", 0), "vm.latency_ms", source),
        notes=_str(raw.get("notes", ""), "vm.notes", source),
        computer_name=_str(raw.get("computer_name", ""), "vm.computer_name", source, empty_ok=True),
        files=tuple((str(k), _str(v, f"vm.files[{k!r}]", source)) for k, v in files.items()),
        services=tuple(
            ServiceSpec(
                name=_str(s.get("name"), "vm.services.name", source),
                display_name=_str(s.get("display_name", s.get("name")), "vm.services.display_name", source),
                status=ServiceStatus(s.get("status", "Running")),
            )
            for s in (
                _table(x, "vm.services", source) for x in _list(raw.get("services", []), "services", source)
            )
        ),
        processes=tuple(
            ProcessSpec(name=_str(p.get("name"), "vm.processes.name", source), id=int(p.get("id", 0)))
            for p in (
                _table(x, "vm.processes", source)
                for x in _list(raw.get("processes", []), "processes", source)
            )
        ),
        hotfixes=tuple(
            HotfixSpec(
                id=_str(h.get("id"), "vm.hotfixes.id", source),
                description=_str(h.get("description", "Update"), "vm.hotfixes.description", source),
                installed_on=str(h.get("installed_on", "")),
            )
            for h in (
                _table(x, "vm.hotfixes", source) for x in _list(raw.get("hotfixes", []), "hotfixes", source)
            )
        ),
        features=tuple(
            FeatureSpec(
                name=_str(f.get("name"), "vm.features.name", source),
                installed=bool(f.get("installed", False)),
                restart=f.get("restart", False) if f.get("restart", False) == "always" else bool(f.get("restart")),
                install_seconds=_num(f.get("install_seconds", 0), "vm.features.install_seconds", source),
            )
            for f in (
                _table(x, "vm.features", source) for x in _list(raw.get("features", []), "features", source)
            )
        ),
        updates=tuple(
            UpdateSpec(
                kb=_str(u.get("kb"), "vm.updates.kb", source),
                title=_str(u.get("title", u.get("kb")), "vm.updates.title", source),
                categories=tuple(str(c) for c in _list(u.get("categories", ["Updates"]), "categories", source)),
                restart=bool(u.get("restart", False)),
            )
            for u in (
                _table(x, "vm.updates", source) for x in _list(raw.get("updates", []), "updates", source)
            )
        ),
        checkpoint_type=checkpoint_type,
        vss=bool(raw.get("vss", True)),
        memory_mb=_num(raw.get("memory_mb", 2048), "vm.memory_mb", source),
        storage_free_mb=_num(raw.get("storage_free_mb", 131072), "vm.storage_free_mb", source),
        faults=FaultSpec(
            session_drop_after_records=None if drop is None else int(drop),
            corrupt_copies=_opt_str(faults.get("corrupt_copies"), "vm.faults.corrupt_copies", source),
            hang_on_restart=bool(faults.get("hang_on_restart", False)),
            connect_fails=bool(faults.get("connect_fails", False)),
            socket_ends_after_records=None if socket_ends is None else int(socket_ends),
        ),
    )


def _generate(raw: dict[str, Any], source: str, hosts: tuple[HostSpec, ...]) -> list[VMSpec]:
    _only_keys(raw, GENERATE_KEYS, f"{source} [generate]")
    spread = raw.get("hosts")
    if spread is None:
        owners = [hosts[0].name]
    elif spread == "*":
        owners = [h.name for h in hosts]
    else:
        wanted = _list(spread, "generate.hosts", source)
        if not wanted:
            raise ConfigError(f"lab file {source}: generate.hosts is empty; name hosts, or \"*\" for all")
        owners = [_owner(h, hosts, f"{source} [generate]") for h in wanted]
    count = int(raw.get("count", 0))
    if count < 0 or count > 100_000:
        raise ConfigError(f"{source} [generate]: count must be between 0 and 100000, not {count}")
    prefix = _str(raw.get("prefix", "vm"), "generate.prefix", source)
    latency = _num(raw.get("latency_ms", 0), "generate.latency_ms", source)
    width = max(3, len(str(count)))
    return [
        VMSpec(
            name=f"{prefix}{i:0{width}d}",
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmbusops-sim:{prefix}{i:0{width}d}".casefold())),
            state=VMState.RUNNING,
            guest_services=bool(raw.get("guest_services", True)),
            latency_ms=latency,
            services=(ServiceSpec(name="WinRM", display_name="Windows Remote Management (WS-Management)"),),
            host=owners[(i - 1) % len(owners)],
        )
        for i in range(1, count + 1)
    ]


def _only_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _table(value: Any, what: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"lab file {source}: {what} must be a table")
    return value


def _list(value: Any, what: str, source: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"lab file {source}: {what} must be an array")
    return value


def _str(value: Any, what: str, source: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and what.endswith("name") and not value):
        raise ConfigError(f"lab file {source}: {what} must be a non-empty string")
    return value


def _opt_str(value: Any, what: str, source: str) -> str | None:
    return None if value is None else _str(value, what, source)


def _num(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"lab file {source}: {what} must be a number >= 0")
    return float(value)
