"""The guest subset's file cmdlets: Test-Path, Get-Content, Set-Content, Get-FileHash and
Get-ChildItem, over the guest's ``C:`` (real files under the state directory).
"""

from __future__ import annotations

import abc
import datetime
import fnmatch
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import trio

from vmbusops.sim.binding import Param
from vmbusops.sim.guest_stage import Stage, fq_name_of
from vmbusops.sim.guest_values import NO_INPUT, StatementError, enumerate_value, to_int, to_text
from vmbusops.sim.streams import SimError, SimObject

T = TypeVar("T")


def _path_not_found(fq: str, path: str, error_id: str = "PathNotFound") -> SimError:
    return SimError(
        message=f"Cannot find path '{path}' because it does not exist.",
        fqid=f"{error_id},{fq}",
        category="ObjectNotFound",
        exception_type="System.Management.Automation.ItemNotFoundException",
        target_name=path,
        target_object=path,
    )


class _PathCmdlet(Stage, abc.ABC):
    """Cmdlets whose -Path comes from an argument or, one by one, from the pipeline."""

    async def process(self, item: Any) -> None:
        paths = self.arg("Path") if item is NO_INPUT else item
        if paths is None and item is NO_INPUT:
            self.require("Path")
        for path in enumerate_value(paths):
            await self.one(to_text(path.get("FullName") if isinstance(path, SimObject) else path))

    @abc.abstractmethod
    async def one(self, path: str) -> None:
        """Handle one path."""


class TestPath(_PathCmdlet):
    name = "Test-Path"
    fq_name = fq_name_of(name)
    params = (Param("Path", 0), Param("PathType"))

    async def one(self, path: str) -> None:
        host = self.session.host_path(path)
        kind = to_text(self.arg("PathType", "Any")).casefold()
        if host is None or not host.exists():
            await self.emit(False)
        elif kind == "leaf":
            await self.emit(host.is_file())
        elif kind == "container":
            await self.emit(host.is_dir())
        else:
            await self.emit(True)


class GetContent(_PathCmdlet):
    name = "Get-Content"
    fq_name = fq_name_of(name)
    params = (Param("Path", 0), Param("Raw", switch=True), Param("TotalCount", aliases=("First", "Head")))

    async def one(self, path: str) -> None:
        host = self.session.host_path(path)
        if host is None or not host.is_file():
            self.streams.error(_path_not_found(self.fq_name, self.session.absolute(path)))
            return
        text = (await read_guest_file(host)).decode("utf-8-sig", errors="replace")
        if self.switch("Raw"):
            await self.emit(text)
            return
        lines = text.splitlines()
        if "TotalCount" in self.bound:
            lines = lines[: to_int(self.arg("TotalCount"))]
        for line in lines:
            await self.emit(line)


class SetContent(Stage):
    name = "Set-Content"
    fq_name = fq_name_of(name)
    # -Encoding is accepted and the file is always UTF-8 (what the agent asks for with UTF8).
    params = (Param("Path", 0), Param("Value", 1), Param("NoNewline", switch=True), Param("Encoding"))

    async def begin(self) -> None:
        self.values: list[Any] = []

    async def process(self, item: Any) -> None:
        if item is not NO_INPUT:
            self.values.append(item)

    async def end(self) -> None:
        self.require("Path")
        values = self.values or enumerate_value(self.arg("Value"))
        sep = "" if self.switch("NoNewline") else "\r\n"
        body = "".join(to_text(v) + sep for v in values)
        for path in enumerate_value(self.arg("Path")):
            full = self.session.absolute(to_text(path))
            host = self.session.host_path(full)
            if host is None or not host.parent.is_dir():
                self.streams.error(
                    SimError(
                        message=f"Could not find a part of the path '{full}'.",
                        fqid=f"GetContentWriterDirectoryNotFoundError,{self.fq_name}",
                        category="ObjectNotFound",
                        exception_type="System.IO.DirectoryNotFoundException",
                        target_name=full,
                        target_object=full,
                    )
                )
                continue
            await write_guest_file(host, body.encode("utf-8"))


class GetFileHash(_PathCmdlet):
    name = "Get-FileHash"
    fq_name = "Microsoft.PowerShell.Commands.GetFileHashCommand"
    params = (Param("Path", 0, aliases=("LiteralPath",)), Param("Algorithm", 1))
    _ALGORITHMS: ClassVar[dict[str, str]] = {
        "sha1": "SHA1",
        "sha256": "SHA256",
        "sha384": "SHA384",
        "sha512": "SHA512",
        "md5": "MD5",
    }

    async def one(self, path: str) -> None:
        algorithm = self._ALGORITHMS.get(to_text(self.arg("Algorithm", "SHA256")).casefold())
        if algorithm is None:
            raise StatementError(
                SimError(
                    message=f"Cannot validate argument on parameter 'Algorithm'. The argument "
                    f'"{to_text(self.arg("Algorithm"))}" does not belong to the set '
                    '"SHA1,SHA256,SHA384,SHA512,MACTripleDES,MD5,RIPEMD160" specified by the ValidateSet '
                    "attribute. Supply an argument that is in the set and then try the command again.",
                    fqid=f"ParameterArgumentValidationError,{self.fq_name}",
                    category="InvalidData",
                    exception_type="System.Management.Automation.ParameterBindingValidationException",
                )
            )
        full = self.session.absolute(path)
        host = self.session.host_path(full)
        if host is None or not host.is_file():
            self.streams.error(
                SimError(
                    message=f"Cannot find path '{full}' because it does not exist.",
                    fqid=f"FileNotFound,{self.fq_name}",
                    category="ObjectNotFound",
                    exception_type="System.Management.Automation.ItemNotFoundException",
                    target_name=full,
                    target_object=full,
                )
            )
            return
        digest = await _in_guest_io(host.stat().st_size, _hash_file, host, algorithm)
        await self.emit(
            SimObject(
                (
                    "Microsoft.Powershell.Utility.FileHash",
                    "System.Management.Automation.PSCustomObject",
                    "System.Object",
                ),
                (("Algorithm", algorithm), ("Hash", digest.upper()), ("Path", full)),
            )
        )


# Guest files are real files on local disk. A few KiB costs microseconds to read or write here;
# handing it to a worker thread costs a GIL hand-off that a busy event loop delays by
# milliseconds, paid on every Get-Content / Set-Content / Get-FileHash / script call. So small
# files are done in place and only large ones go to a worker thread.
_INLINE_IO_BYTES = 64 * 1024


async def _in_guest_io(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size <= _INLINE_IO_BYTES:
        result = fn(*args)
        await trio.lowlevel.checkpoint()
        return result
    return await trio.to_thread.run_sync(fn, *args)


async def read_guest_file(path: Path) -> bytes:
    return await _in_guest_io(path.stat().st_size, path.read_bytes)  # noqa: ASYNC240 (see above)


async def write_guest_file(path: Path, data: bytes) -> None:
    await _in_guest_io(len(data), path.write_bytes, data)


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm.lower())
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class GetChildItem(Stage):
    name = "Get-ChildItem"
    fq_name = fq_name_of(name)
    params = (
        Param("Path", 0),
        Param("Filter", 1),
        Param("Recurse", switch=True),
        Param("File", switch=True),
        Param("Directory", switch=True),
    )

    async def process(self, item: Any) -> None:
        paths = enumerate_value(self.arg("Path", self.session.cwd) if item is NO_INPUT else item)
        for path in paths:
            full = self.session.absolute(to_text(path))
            host = self.session.host_path(full)
            if host is None or not host.exists():
                self.streams.error(_path_not_found(self.fq_name, full))
                continue
            entries = (
                [host]
                if host.is_file()
                else sorted(
                    host.rglob("*") if self.switch("Recurse") else host.iterdir(),
                    key=lambda p: (not p.is_dir(), str(p).casefold()),
                )
            )
            flt = self.arg("Filter")
            for entry in entries:
                if entry.name.startswith(".seeded-"):
                    continue
                if self.switch("File") and not entry.is_file():
                    continue
                if self.switch("Directory") and not entry.is_dir():
                    continue
                if flt is not None and not fnmatch.fnmatchcase(
                    entry.name.casefold(), to_text(flt).casefold()
                ):
                    continue
                await self.emit(self.item_object(entry))

    def item_object(self, entry: Path) -> SimObject:
        rel = entry.relative_to(self.session.root)
        full = f"{rel.parts[0]}:\\" + "\\".join(rel.parts[1:])
        stat = entry.stat()
        written = datetime.datetime.fromtimestamp(stat.st_mtime).strftime("%Y-%m-%dT%H:%M:%S")
        if entry.is_dir():
            return SimObject(
                (
                    "System.IO.DirectoryInfo",
                    "System.IO.FileSystemInfo",
                    "System.MarshalByRefObject",
                    "System.Object",
                ),
                (
                    ("Name", entry.name),
                    ("FullName", full),
                    ("Mode", "d-----"),
                    ("LastWriteTime", written),
                    ("PSIsContainer", True),
                ),
                entry.name,
            )
        return SimObject(
            ("System.IO.FileInfo", "System.IO.FileSystemInfo", "System.MarshalByRefObject", "System.Object"),
            (
                ("Name", entry.name),
                ("FullName", full),
                ("Length", stat.st_size),
                ("Mode", "-a----"),
                ("LastWriteTime", written),
                ("PSIsContainer", False),
            ),
            entry.name,
        )


