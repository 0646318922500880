"""Staging files onto a remote Hyper-V host's disk before Copy-VMFile reads them.

Copy-VMFile's ``-SourcePath`` is a path on the *host*. A local agent already has its files there;
a remote agent must first put them there. :func:`stage_files` does it per job:

1. create a fresh folder under the host's staging root (``job-<id>-<random>``);
2. upload every file: over SSH by SFTP on the connection that carries PSRP; over WinRM through
   PSRP itself (:class:`PsrpStager`: chunks handed to the endpoint's ``Write-VmbusOpsStagedFile``);
3. ask the host to hash what landed (``Get-FileHash -LiteralPath ... -Algorithm SHA256``, one
   pipeline for all files) and compare with the SHA-256 the bundle manifest promised;
4. yield the host paths, to be passed to ``copy_to_guest``;
5. remove the folder when the block ends - normally, on error, or on cancellation (shielded,
   bounded), so a failed job leaves nothing behind on the host.

On a local host (``sim``, ``local``, ``pwsh``) the files are already on the host's disk: the block
yields their own paths and nothing is copied.

``Get-FileHash`` is the only cmdlet staging adds to what the agent sends (:data:`STAGING_CMDLETS`);
the least-privilege endpoint allows it only under the staging root. Over WinRM staging also calls
the endpoint's two functions (:data:`STAGING_FUNCTIONS`), defined in its role capability.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Final, Protocol

import trio

from vmbusops.errors import TransportError, VmbusOpsError
from vmbusops.psrp.client import Command
from vmbusops.records import ErrorRecord, OutputRecord, PipelineStateRecord, PSObjectValue, Record

if TYPE_CHECKING:
    from vmbusops.guestops.host import HyperVHost
    from vmbusops.guestops.remote_host import RemoteHyperVHost
    from vmbusops.psrp.session import HostSession
    from vmbusops.psrp.ssh import SshConnection

#: Cmdlets staging sends, beside :data:`vmbusops.guestops.host.HOST_CMDLETS`.
STAGING_CMDLETS: Final = frozenset({"Get-FileHash"})
#: Functions the endpoint's role defines for staging over WinRM (``host_agent/``).
STAGING_FUNCTIONS: Final = frozenset({"Write-VmbusOpsStagedFile", "Remove-VmbusOpsStagingFolder"})

_SFTP_BLOCK = -1  # the largest write the server advertises (limits@openssh.com), else 16 KiB
_SFTP_REQUESTS = 128
_PARALLEL_FILES = 4
_CLEANUP_TIMEOUT = 60.0
#: PSRP staging: bytes per Write-VmbusOpsStagedFile call, and calls in flight per transfer.
PSRP_CHUNK = 1 << 20
PSRP_IN_FLIGHT = 8


class StagingError(VmbusOpsError):
    """A staged file did not arrive intact on the host (or could not be put there)."""

    transient = True


@dataclass(frozen=True, slots=True)
class StageFile:
    """A local file to stage, with the SHA-256 it must have (hex; computed when not given)."""

    local: Path
    sha256: str | None = None
    name: str | None = None
    """Its name in the staging folder; default the local file's name. No folders."""

    @property
    def staged_name(self) -> str:
        name = self.name or self.local.name
        if not re.fullmatch(r"[A-Za-z0-9_][^\\/:*?\"<>|\x00-\x1f]*", name):
            raise StagingError(
                f"{name!r} cannot be a staged file name",
                hint="a staged name starts with a letter, digit or '_' and has no path separators",
            )
        return name


def host_path_join(root: str, *parts: str) -> str:
    """Join in the host's own path style: Windows for ``C:\\...``, POSIX otherwise."""
    if re.match(r"^[A-Za-z]:[\\/]", root) or root.startswith("\\\\"):
        return str(PureWindowsPath(root, *parts))
    return str(PurePosixPath(root, *parts))


def sftp_path(host_path: str) -> str:
    """The SFTP spelling of a host path: Windows OpenSSH wants ``/C:/dir/file``."""
    if re.match(r"^[A-Za-z]:[\\/]", host_path):
        return "/" + host_path.replace("\\", "/")
    return host_path


class Stager(Protocol):
    """Puts files on one host's disk; :func:`stage_files` drives it."""

    @property
    def root(self) -> str: ...

    async def make_folder(self, name: str) -> str: ...

    async def put(self, files: Sequence[StageFile], folder: str) -> list[str]: ...

    async def remove_folder(self, folder: str) -> None: ...


class SftpStager:
    """Staging over SFTP on the SSH connection that already carries PSRP.

    asyncssh pipelines many block writes per file (``max_requests``) and files go in parallel,
    all on the connection's own asyncio loop, so one transfer is one cross-thread call.
    """

    def __init__(self, connection: SshConnection, root: str) -> None:
        self._conn = connection
        self._root = root

    @property
    def root(self) -> str:
        return self._root

    async def make_folder(self, name: str) -> str:
        folder = host_path_join(self._root, name)

        async def mkdir() -> None:
            async with self._conn.connection.start_sftp_client() as sftp:
                await sftp.makedirs(sftp_path(self._root), exist_ok=True)
                await sftp.mkdir(sftp_path(folder))

        await self._call(mkdir(), f"create the staging folder {folder}")
        return folder

    async def put(self, files: Sequence[StageFile], folder: str) -> list[str]:
        import asyncio

        targets = [host_path_join(folder, f.staged_name) for f in files]

        async def upload() -> None:
            async with self._conn.connection.start_sftp_client() as sftp:
                limit = asyncio.Semaphore(_PARALLEL_FILES)

                async def one(local: Path, remote: str) -> None:
                    async with limit:
                        await sftp.put(
                            str(local), sftp_path(remote), block_size=_SFTP_BLOCK, max_requests=_SFTP_REQUESTS
                        )

                await asyncio.gather(*(one(f.local, t) for f, t in zip(files, targets, strict=True)))

        await self._call(upload(), f"upload {len(files)} file(s) to {folder}")
        return targets

    async def remove_folder(self, folder: str) -> None:
        async def rmtree() -> None:
            async with self._conn.connection.start_sftp_client() as sftp:
                if await sftp.exists(sftp_path(folder)):
                    await sftp.rmtree(sftp_path(folder))

        await self._call(rmtree(), f"remove the staging folder {folder}")

    async def _call(self, coro: object, what: str) -> None:
        import asyncssh

        from vmbusops.psrp.ssh_bridge import LoopClosedError

        try:
            await self._conn.bridge.run(coro)  # type: ignore[arg-type]
        except (asyncssh.Error, OSError, LoopClosedError) as exc:
            raise StagingError(f"{self._conn.describe()}: cannot {what}: {exc}") from exc


class PsrpStager:
    """Staging through the PSRP session itself, for hosts reached over WinRM (no SFTP there).

    Each file goes as ``Write-VmbusOpsStagedFile -Path -Offset -Data`` calls of
    :data:`PSRP_CHUNK` bytes (a byte array is sent as-is in CLIXML, base64), up to
    :data:`PSRP_IN_FLIGHT` at once on the pool's runspaces, so the WinRM round trips overlap and
    memory stays bounded. The endpoint's function writes only directly inside a ``job-*`` folder
    under the staging root and creates that folder with the first chunk; what landed is then
    hashed on the host (``Get-FileHash``) like any staged file.
    """

    def __init__(
        self, pool: HostSession, root: str, *, chunk: int = PSRP_CHUNK, in_flight: int = PSRP_IN_FLIGHT
    ) -> None:
        self._pool = pool
        self._root = root
        self._chunk = max(1, chunk)
        self._in_flight = max(1, in_flight)

    @property
    def root(self) -> str:
        return self._root

    async def make_folder(self, name: str) -> str:
        return host_path_join(self._root, name)

    async def put(self, files: Sequence[StageFile], folder: str) -> list[str]:
        targets = [host_path_join(folder, f.staged_name) for f in files]
        slots = trio.Semaphore(self._in_flight)
        failures: list[VmbusOpsError] = []

        async def write(target: str, offset: int, data: bytes) -> None:
            try:
                records = await self._pool.run(
                    [[Command("Write-VmbusOpsStagedFile", {"Path": target, "Offset": offset, "Data": data})]]
                )
                if problem := _failure(records):
                    raise StagingError(
                        f"{self._pool.description}: cannot write {target} at {offset}: {problem}"
                    )
            except VmbusOpsError as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            for f, target in zip(files, targets, strict=True):
                try:
                    fh = await trio.open_file(f.local, "rb")
                except OSError as exc:
                    raise StagingError(f"cannot stage {f.local}: {exc.strerror or exc}") from exc
                async with fh:
                    offset = 0
                    while True:
                        await slots.acquire()
                        data = await fh.read(self._chunk)
                        if not data and offset:
                            slots.release()
                            break
                        nursery.start_soon(write, target, offset, data)
                        offset += len(data)
                        if len(data) < self._chunk:
                            break
        if failures:
            raise failures[0]
        return targets

    async def remove_folder(self, folder: str) -> None:
        records = await self._pool.run([[Command("Remove-VmbusOpsStagingFolder", {"Path": folder})]])
        if problem := _failure(records):
            raise StagingError(
                f"{self._pool.description}: cannot remove the staging folder {folder}: {problem}"
            )


def _failure(records: Sequence[Record]) -> str | None:
    for record in records:
        if isinstance(record, ErrorRecord):
            return record.message
        if isinstance(record, PipelineStateRecord) and record.error is not None:
            return record.error.message
    return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _expected_hashes(files: Sequence[StageFile]) -> list[str]:
    out: list[str] = []
    for f in files:
        out.append(f.sha256.lower() if f.sha256 else await trio.to_thread.run_sync(_sha256_file, f.local))
    return out


async def verify_on_host(host: HyperVHost, paths: Sequence[str], expected: Sequence[str]) -> None:
    """Hash the staged files on the host (``Get-FileHash``) and compare; raise StagingError."""
    records = await host.pool.run(
        [[Command("Get-FileHash", {"LiteralPath": list(paths), "Algorithm": "SHA256"})]]
    )
    seen: dict[str, str] = {}
    errors: list[str] = []
    for record in records:
        if isinstance(record, OutputRecord) and isinstance(record.value, PSObjectValue):
            path, digest = record.value.get("Path"), record.value.get("Hash")
            if isinstance(path, str) and isinstance(digest, str):
                seen[path.casefold()] = digest.lower()
        elif isinstance(record, ErrorRecord):
            errors.append(record.message)
        elif isinstance(record, PipelineStateRecord) and record.error is not None:
            errors.append(record.error.message)
    for path, want in zip(paths, expected, strict=True):
        got = seen.get(path.casefold())
        if got != want:
            detail = (
                f"the host reports {got}" if got else ("; ".join(errors[:3]) or "the host did not hash it")
            )
            raise StagingError(
                f"staged file {path} on {host.pool.description} is not what was sent: "
                f"expected SHA-256 {want}, {detail}"
            )


def _folder_name(job: str | None) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", job or "adhoc")[:40]
    return f"job-{tag}-{secrets.token_hex(6)}"


@asynccontextmanager
async def stage_files(
    host: HyperVHost,
    files: Sequence[StageFile | Path | str],
    *,
    job: str | None = None,
) -> AsyncIterator[list[str]]:
    """Put ``files`` on the host's disk for Copy-VMFile; yield their host paths, in order.

    The per-job folder is removed when the block ends, whatever happens in it.
    """
    items = [f if isinstance(f, StageFile) else StageFile(Path(f)) for f in files]
    stager: Stager | None = getattr(host, "stager", None)
    if stager is None:
        yield [os.fspath(f.local) for f in items]
        return
    names = [f.staged_name for f in items]
    if len({n.casefold() for n in names}) != len(names):
        raise StagingError("two staged files have the same name; give them distinct names")
    expected = await _expected_hashes(items)
    folder = await stager.make_folder(_folder_name(job))
    registry: set[str] = getattr(host, "staged_paths", set())
    paths: list[str] = []
    try:
        paths = await stager.put(items, folder)
        await verify_on_host(host, paths, expected)
        registry.update(paths)
        yield paths
    finally:
        registry.difference_update(paths)
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            try:
                await stager.remove_folder(folder)
            except (StagingError, TransportError):
                # The job's own outcome is what the caller must see; a leftover folder has a
                # unique name, so it never collides with a later job's files.
                pass


class OnDemandStaging:
    """Stages single files as ``copy_to_guest`` meets them, for callers that pass local paths.

    One folder per host connection, created at the first file and removed when the connection
    closes; each distinct file content is uploaded and verified once, then reused (a DSC module
    copied into fifty guests crosses the network once).
    """

    def __init__(self, host: RemoteHyperVHost) -> None:
        self._host = host
        self._folder: str | None = None
        self._by_content: dict[tuple[str, int, int], str] = {}
        self._lock = trio.Lock()
        self._count = 0

    async def host_path(self, local: str) -> str:
        path = Path(local)
        try:
            info = await trio.Path(path).stat()
        except OSError as exc:
            raise StagingError(f"cannot stage {local}: {exc.strerror or exc}") from exc
        key = (str(await trio.Path(local).resolve()), info.st_size, info.st_mtime_ns)
        async with self._lock:
            if key in self._by_content:
                return self._by_content[key]
            stager = self._host.stager
            if self._folder is None:
                self._folder = await stager.make_folder(_folder_name("session"))
            self._count += 1
            item = StageFile(path, name=f"{self._count:05d}_{_safe_name(path.name)}")
            [expected] = await _expected_hashes([item])
            [remote] = await stager.put([item], self._folder)
            await verify_on_host(self._host, [remote], [expected])
            self._by_content[key] = remote
            return remote

    async def aclose(self) -> None:
        folder, self._folder = self._folder, None
        self._by_content.clear()
        if folder is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            try:
                await self._host.stager.remove_folder(folder)
            except (StagingError, TransportError):
                pass


def _safe_name(name: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", name) or "file"
