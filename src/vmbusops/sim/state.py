"""The simulated host's persistent state: what changes when cmdlets run.

The lab says how VMs start out; this module remembers what happened since (VM power states,
boot times, integration services, guest files) so that one ``vmbusops`` command sees what the
previous one did, even though each starts its own simulator process.

Layout of the state directory::

    state.json      VM runtime state (and, in a lab of several hosts, which host owns each VM
                    and which hosts are down), keyed by lab fingerprint
    state.lock      fcntl lock; several simulator processes may run at once
    guests/<vm>/C/  each guest's C: drive as real files (beside it, system.json, lcm.json,
                    tasks.json...: the rest of what the guest keeps)
    checkpoints/<vm>/<id>/  a copy of guests/<vm> as it was when checkpoint <id> was taken
                    (its name, type and parent are in state.json with the VM)

Every change is a read-modify-write under an exclusive lock, written to a temporary file and
renamed over ``state.json``, so a reader never sees half a file and two writers never lose an
update. State made from a different lab (other fingerprint) is discarded and rebuilt.

Each process keeps the parsed state in memory and reads the file again only when another
process has changed it (see :class:`HostStore`), so a command costs a few system calls, not a
parse of every VM's state.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vmbusops.errors import ConfigError
from vmbusops.sim.lab import Lab, VMSpec, VMState
from vmbusops.sim.spare_files import SpareFiles

# The lock file holds a random token each writer replaces (see HostStore).
_TOKEN_BYTES = 16
# (token, st_ino, st_size, st_mtime_ns) of state.json as last read or written.
_FileKey = tuple[bytes, int, int, int]

GUEST_SERVICE_INTERFACE = "Guest Service Interface"
# Hyper-V's integration services, in the order Get-VMIntegrationService lists them.
INTEGRATION_SERVICES = (
    GUEST_SERVICE_INTERFACE,
    "Heartbeat",
    "Key-Value Pair Exchange",
    "Shutdown",
    "Time Synchronization",
    "VSS",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRecord:
    """One checkpoint of a VM (a VMSnapshot): the guest's copy is in ``checkpoints/<vm>/<id>``."""

    id: str
    name: str
    created: float
    #: A production checkpoint (VSS in the guest, no memory) or a standard one.
    production: bool
    #: The VM's power state the checkpoint holds: "Off" when it holds no memory.
    state: str
    parent: str | None = None
    #: Space it takes on the VM's volume, in MiB.
    size_mb: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VMRuntime:
    """What the simulated host currently knows about one VM."""

    state: VMState
    integration: tuple[tuple[str, bool], ...]
    running_since: float | None = None
    # The guest answers PowerShell Direct and heartbeats only after this time.
    boot_until: float = 0.0
    #: The host that owns the VM now (the lab's host at first; see vmbusops.sim.cluster).
    host: str = ""
    #: How often it changed owner: a session opened before a move (even one there and back) is
    #: one the move broke.
    moves: int = 0
    #: The VM's checkpoints, oldest first, and the one its current state descends from.
    checkpoints: tuple[CheckpointRecord, ...] = ()
    current_checkpoint: str | None = None

    def service_enabled(self, name: str) -> bool | None:
        for key, enabled in self.integration:
            if key.casefold() == name.casefold():
                return enabled
        return None

    def booted(self, now: float) -> bool:
        return self.state is VMState.RUNNING and now >= self.boot_until

    def heartbeat(self, spec: VMSpec, now: float) -> str | None:
        if self.state is not VMState.RUNNING:
            return None
        if now < self.boot_until:
            return "NoContact"
        return spec.heartbeat

    def with_integration(self, name: str, enabled: bool) -> VMRuntime:
        return replace(
            self,
            integration=tuple(
                (k, enabled if k.casefold() == name.casefold() else v) for k, v in self.integration
            ),
        )

    def started(self, now: float, boot_seconds: float) -> VMRuntime:
        return replace(self, state=VMState.RUNNING, running_since=now, boot_until=now + boot_seconds)

    def stopped(self) -> VMRuntime:
        return replace(self, state=VMState.OFF, running_since=None, boot_until=0.0)


def initial_runtime(spec: VMSpec, now: float) -> VMRuntime:
    return VMRuntime(
        host=spec.host,
        state=spec.state,
        integration=tuple(
            (name, spec.guest_services if name == GUEST_SERVICE_INTERFACE else True)
            for name in INTEGRATION_SERVICES
        ),
        running_since=now if spec.state is VMState.RUNNING else None,
    )


def _runtime_to_json(rt: VMRuntime) -> dict[str, Any]:
    return {
        "state": rt.state.value,
        "integration": dict(rt.integration),
        "running_since": rt.running_since,
        "boot_until": rt.boot_until,
        "host": rt.host,
        "moves": rt.moves,
        "checkpoints": [
            {"id": c.id, "name": c.name, "created": c.created, "production": c.production, "state": c.state,
             "parent": c.parent, "size_mb": c.size_mb}
            for c in rt.checkpoints
        ],
        "current_checkpoint": rt.current_checkpoint,
    }


def _runtime_from_json(raw: dict[str, Any], spec: VMSpec | None) -> VMRuntime:
    host = raw.get("host")
    return VMRuntime(
        state=VMState(raw["state"]),
        integration=tuple((str(k), bool(v)) for k, v in raw["integration"].items()),
        running_since=raw.get("running_since"),
        boot_until=float(raw.get("boot_until", 0.0)),
        # State written before VMs had owners: the lab's host.
        host=str(host) if host else (spec.host if spec is not None else ""),
        moves=int(raw.get("moves", 0)),
        checkpoints=tuple(
            CheckpointRecord(
                id=str(c["id"]), name=str(c["name"]), created=float(c["created"]), production=bool(c["production"]),
                state=str(c["state"]), parent=None if c.get("parent") is None else str(c["parent"]),
                size_mb=float(c.get("size_mb", 0.0)),
            )
            for c in raw.get("checkpoints", ())
        ),
        current_checkpoint=None if raw.get("current_checkpoint") is None else str(raw["current_checkpoint"]),
    )


@dataclass(frozen=True, slots=True)
class FleetState:
    """What a change of several VMs at once sees and returns (:meth:`HostStore.transact`): every
    VM's runtime state, keyed by case-folded name, and the hosts that are down."""

    vms: dict[str, VMRuntime]
    down: frozenset[str]


class HostStore:
    """Persistent VM runtime state and guest file systems of one lab in one directory.

    The parsed state stays in memory between commands. Under the lock, each use checks whether
    ``state.json`` changed since it was read (its inode, size and modification time, plus a
    random token every writer stores in the lock file: the inode of a replaced file can be
    reused and coarse timestamps repeat, the token does not) and reads it again only then.
    The file is written only when something changed.
    """

    def __init__(self, lab: Lab, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.clock = clock
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (state_dir / "guests").mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the simulator state directory {state_dir}: {exc.strerror}"
            ) from exc
        self._state_file = state_dir / "state.json"
        self._lock_file = state_dir / "state.lock"
        self._lock_fd: int | None = None
        self._release_lock_fd: weakref.finalize[[int], HostStore] | None = None
        # What state.json held when last read or written, and how to tell it has not changed.
        self._vms: dict[str, VMRuntime] = {}
        self._down: frozenset[str] = frozenset()
        self._vms_complete = False
        self._key: _FileKey | None = None
        # Each guest's root and seeded-marker paths, built once (see guest_root).
        self._guest_paths: dict[str, tuple[Path, Path]] = {}
        #: Inodes kept for the guests' short-lived files (the invoker's step files).
        self.spare_files = SpareFiles(state_dir / "spare")

    def close(self) -> None:
        """Release the lock file; the store opens it again if used afterwards."""
        if self._release_lock_fd is not None:
            self._release_lock_fd()
            self._release_lock_fd = None
        self._lock_fd = None

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int]:
        """Hold the lock file's fcntl lock; yields its descriptor. Never nest: one descriptor."""
        if self._lock_fd is None:
            # Kept open for the store's life: one flock call per use instead of open + close.
            self._lock_fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._release_lock_fd = weakref.finalize(self, os.close, self._lock_fd)
        fd = self._lock_fd
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _file_key(self, lock_fd: int) -> _FileKey | None:
        try:
            st = os.stat(self._state_file)
        except FileNotFoundError:
            return None
        return (os.pread(lock_fd, _TOKEN_BYTES, 0), st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, lock_fd: int) -> dict[str, VMRuntime]:
        """The state as on disk now (read again only if it changed); the lock must be held."""
        key = self._file_key(lock_fd)
        if key is None or key != self._key:
            read = self._read_unlocked() if key is not None else None
            self._vms, self._down = read if read is not None else ({}, frozenset())
            self._vms_complete = all(spec.name.casefold() in self._vms for spec in self.lab.vms)
            self._key = key
        return self._vms

    def _read_unlocked(self) -> tuple[dict[str, VMRuntime], frozenset[str]] | None:
        try:
            raw = json.loads(self._state_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A corrupt file is rebuilt from the lab rather than wedging every later command.
            return None
        if not isinstance(raw, dict) or raw.get("lab") != self.lab.fingerprint:
            return None
        try:
            vms = {name: _runtime_from_json(v, self.lab.find(name)) for name, v in raw["vms"].items()}
            return vms, frozenset(str(h) for h in raw.get("down", ()))
        except (KeyError, ValueError, TypeError, AttributeError):
            return None

    def _write_unlocked(self, lock_fd: int, vms: dict[str, VMRuntime], down: frozenset[str] | None = None) -> None:
        down = self._down if down is None else down
        body = json.dumps(
            {
                "lab": self.lab.fingerprint,
                "vms": {k: _runtime_to_json(v) for k, v in vms.items()},
                "down": sorted(down),
            },
            indent=1,
            sort_keys=True,
        )
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body)
            os.replace(tmp, self._state_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._key = None
            raise
        os.pwrite(lock_fd, os.urandom(_TOKEN_BYTES), 0)
        self._vms = vms
        self._down = down
        self._vms_complete = True
        self._key = self._file_key(lock_fd)

    def _complete(self, vms: Mapping[str, VMRuntime]) -> tuple[dict[str, VMRuntime], bool]:
        """Fill in VMs the state does not know yet; True if anything was added."""
        full = dict(vms)
        changed = False
        now = self.clock()
        for spec in self.lab.vms:
            key = spec.name.casefold()
            if key not in full:
                full[key] = initial_runtime(spec, now)
                changed = True
        return full, changed

    def snapshot(self) -> Mapping[str, VMRuntime]:
        """Every VM's runtime state, keyed by case-folded name. Callers must not change it."""
        with self._locked(exclusive=False) as fd:
            vms = self._load(fd)
            if self._vms_complete:
                return vms
        with self._locked(exclusive=True) as fd:
            # Someone may have written meanwhile: merge onto what is there now.
            vms, changed = self._complete(self._load(fd))
            if changed:
                self._write_unlocked(fd, vms)
            return vms

    def runtime(self, spec: VMSpec) -> VMRuntime:
        return self.snapshot()[spec.name.casefold()]

    def down_hosts(self) -> frozenset[str]:
        """The hosts that are down now (``vmbusops lab fail-host``), as the lab spells them."""
        self.snapshot()
        return self._down

    def transact(self, change: Callable[[FleetState], FleetState]) -> FleetState:
        """Apply ``change`` to every VM and the down hosts at once, atomically; returns the new state.

        ``change`` gets a copy it may keep; it must not raise after deciding to change nothing
        half-way (raise before, and nothing is written)."""
        with self._locked(exclusive=True) as fd:
            vms, changed = self._complete(self._load(fd))
            before = FleetState(vms=dict(vms), down=self._down)
            after = change(before)
            if changed or after.down != self._down or after.vms != vms:
                self._write_unlocked(fd, dict(after.vms), after.down)
            return after

    def update(self, spec: VMSpec, change: Callable[[VMRuntime], VMRuntime]) -> VMRuntime:
        """Apply ``change`` to one VM atomically; returns the new runtime state."""
        with self._locked(exclusive=True) as fd:
            # A new dict each time: snapshots handed out earlier stay as they were.
            vms, changed = self._complete(self._load(fd))
            key = spec.name.casefold()
            new = change(vms[key])
            if new != vms[key] or changed:
                vms[key] = new
                self._write_unlocked(fd, vms)
            return new

    def checkpoint_root(self, spec: VMSpec, checkpoint_id: str) -> Path:
        """Where checkpoint ``checkpoint_id`` keeps its copy of the guest (see vmbusops.sim.checkpoints)."""
        return self.state_dir / "checkpoints" / spec.name.casefold() / checkpoint_id

    def locked(self) -> contextlib.AbstractContextManager[int]:
        """The store's exclusive lock, for changing a guest's files with no other writer of the state."""
        return self._locked(exclusive=True)

    def guest_root(self, spec: VMSpec) -> Path:
        """The directory holding the guest's drives, seeded with the lab's files on first use."""
        paths = self._guest_paths.get(spec.name)
        if paths is None:
            root = self.state_dir / "guests" / spec.name.casefold()
            paths = self._guest_paths[spec.name] = (root, root / f".seeded-{self.lab.fingerprint}")
        root, marker = paths
        # The marker is checked every time (one stat): another process may have reset the state.
        if os.path.exists(marker):
            return root
        with self._locked(exclusive=True):
            if not marker.exists():
                drive = root / "C"
                for sub in ("Windows/Temp", f"Users/{spec.username}/Documents", "Program Files"):
                    os.makedirs(drive / sub, exist_ok=True)
                for guest_path, content in spec.files:
                    host_path = guest_path_to_host(root, guest_path)
                    if host_path is not None and not host_path.exists():
                        host_path.parent.mkdir(parents=True, exist_ok=True)
                        host_path.write_text(content, encoding="utf-8")
                marker.write_text("", encoding="utf-8")
        return root


def split_guest_path(path: str) -> tuple[str, list[str]] | None:
    """``C:\\a\\b`` -> ("C", ["a", "b"]); None unless it is an absolute drive path without ``..``."""
    p = path.replace("/", "\\")
    if len(p) < 2 or p[1] != ":" or not p[0].isalpha():
        return None
    parts = [part for part in p[2:].split("\\") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    return p[0].upper(), parts


def guest_path_to_host(root: Path, guest_path: str) -> Path | None:
    """Where a guest path lives on the host, matching existing names case-insensitively.

    Windows file names are case-insensitive and the host's are not, so each component is
    looked up among the existing entries before a new name is used as given. (On strings, with
    pathlib's rules for what exists: every guest call resolves a path or two here.)
    """
    split = split_guest_path(guest_path)
    if split is None:
        return None
    drive, parts = split
    current = os.path.join(root, drive)
    if len(parts) > 1:
        # Every folder there as named (the common case: one stat, not two per component) is what
        # the lookup below would pick component by component.
        parent = os.path.join(current, *parts[:-1])
        if os.path.isdir(parent):
            current, parts = parent, parts[-1:]
    for part in parts:
        candidate = os.path.join(current, part)
        if not _exists(candidate):
            folded = part.casefold()
            for name in _entries(current):
                if name.casefold() == folded:
                    candidate = os.path.join(current, name)
                    break
        current = candidate
    return Path(current)


# What pathlib's exists() and is_dir() take to mean "not there" rather than an error.
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _exists(path: str) -> bool:
    """``Path(path).exists()``."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno not in _NOT_THERE:
            raise
        return False
    except ValueError:
        return False
    return True


def _entries(folder: str) -> list[str]:
    """``[p.name for p in Path(folder).iterdir()] if Path(folder).is_dir() else []``, in one call."""
    try:
        return os.listdir(folder)
    except OSError as exc:
        if exc.errno not in _NOT_THERE:
            raise
        return []
    except ValueError:
        return []


def host_path_to_guest(root: Path, host_path: Path) -> str:
    rel = host_path.relative_to(root)
    drive, *rest = rel.parts
    return f"{drive}:\\" + "\\".join(rest)
