"""Host cmdlets beside Hyper-V's: ``Get-FileHash`` for staged files, ``Get-Command``, and the
endpoint's two staging functions (``host_agent/``'s role defines them for WinRM staging):
``Write-VmbusOpsStagedFile`` writes one chunk at an offset of a file in a per-job folder, and
``Remove-VmbusOpsStagingFolder`` removes such a folder. As on the endpoint, they touch only a
file directly inside a ``job-*`` folder, or that folder.

A remote agent stages files onto the host's disk before Copy-VMFile reads them, then asks the
host to hash them. The simulated host's disk is the real local file system (the simulator runs
on the machine it pretends to be), so this hashes real files, as the real cmdlet does.
``Get-Command`` lists what the host offers, as a JEA endpoint answers it with its visible cmdlets.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import trio

from vmbusops.sim.binding import BindingError, Param, require
from vmbusops.sim.guest_values import to_text
from vmbusops.sim.host_command import HOST_ALIASES, HostCmdlet, HostContext
from vmbusops.sim.streams import SimError, SimObject, Streams

UTILITY = "Microsoft.PowerShell.Commands"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest().upper()


async def get_file_hash(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "LiteralPath")
    algorithm = to_text(b.get("Algorithm") or "SHA256")
    if algorithm.upper() != "SHA256":
        raise BindingError(
            SimError(
                message=f"The vmbusops simulator hashes only with SHA256, not {algorithm}.",
                fqid=f"NotSupported,{UTILITY}.GetFileHashCommand",
                category="NotImplemented",
            )
        )
    raw = b["LiteralPath"]
    paths = [to_text(p) for p in raw] if isinstance(raw, list) else [to_text(raw)]
    for text in paths:
        path = Path(text)
        if not await trio.Path(path).is_file():
            streams.error(
                SimError(
                    message=f"Cannot find path '{text}' because it does not exist.",
                    fqid=f"FileNotFound,{UTILITY}.GetFileHashCommand",
                    category="ObjectNotFound",
                    exception_type="System.Management.Automation.ItemNotFoundException",
                )
            )
            continue
        digest = await trio.to_thread.run_sync(_sha256, path)
        streams.output(
            SimObject(
                ("Microsoft.Powershell.Utility.FileHash", "System.Object"),
                (("Algorithm", "SHA256"), ("Hash", digest), ("Path", text)),
            )
        )


_STAGED_FOLDER = re.compile(r"job-[A-Za-z0-9_.-]+")
_STAGED_NAME = re.compile(r"[A-Za-z0-9_][^\\/:*?\"<>|\x00-\x1f]*")


def _staging_refused(text: str, fq: str) -> BindingError:
    return BindingError(
        SimError(
            message=f"Cannot validate argument on parameter 'Path'. {text!r} is not a vmbusops staging path.",
            fqid=f"ParameterArgumentValidationError,{fq}",
            category="InvalidData",
            exception_type="System.Management.Automation.ParameterBindingValidationException",
        )
    )


def _write_at(path: Path, offset: int, data: bytes) -> None:
    # Chunks of one file arrive in parallel: open without truncating, as FileMode.OpenOrCreate.
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


async def write_staged_file(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "Path", "Offset", "Data")
    text = to_text(b["Path"])
    path = Path(text)
    if not (_STAGED_NAME.fullmatch(path.name) and _STAGED_FOLDER.fullmatch(path.parent.name)):
        raise _staging_refused(text, fq)
    data = b["Data"]
    if not isinstance(data, bytes | bytearray):
        raise _staging_refused(f"{type(data).__name__} data for {text}", fq)
    await trio.to_thread.run_sync(_write_at, path, int(b["Offset"]), bytes(data))


async def remove_staging_folder(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "Path")
    text = to_text(b["Path"])
    if not _STAGED_FOLDER.fullmatch(Path(text).name):
        raise _staging_refused(text, fq)
    await trio.to_thread.run_sync(lambda: shutil.rmtree(text, ignore_errors=True))


_MODULES = {"get-filehash": "Microsoft.PowerShell.Utility", "get-command": "Microsoft.PowerShell.Core",
            "invoke-command": "Microsoft.PowerShell.Core"}
_SPELLING = {
    "get-vm": "Get-VM", "get-vmintegrationservice": "Get-VMIntegrationService",
    "enable-vmintegrationservice": "Enable-VMIntegrationService",
    "disable-vmintegrationservice": "Disable-VMIntegrationService", "copy-vmfile": "Copy-VMFile",
    "invoke-command": "Invoke-Command", "restart-vm": "Restart-VM", "start-vm": "Start-VM", "stop-vm": "Stop-VM",
    "get-filehash": "Get-FileHash", "get-command": "Get-Command",
    "write-vmbusopsstagedfile": "Write-VmbusOpsStagedFile", "remove-vmbusopsstagingfolder": "Remove-VmbusOpsStagingFolder",
    "invoke-vmbusopsguest": "Invoke-VmbusOpsGuest",
    "checkpoint-vm": "Checkpoint-VM", "get-vmsnapshot": "Get-VMSnapshot", "restore-vmsnapshot": "Restore-VMSnapshot",
    "remove-vmsnapshot": "Remove-VMSnapshot", "get-vmharddiskdrive": "Get-VMHardDiskDrive",
    "get-volume": "Get-Volume", "get-vmcheckpoint": "Get-VMCheckpoint",
    "restore-vmcheckpoint": "Restore-VMCheckpoint", "remove-vmcheckpoint": "Remove-VMCheckpoint",
    "get-vmgroup": "Get-VMGroup",
}
_FUNCTIONS = frozenset({"write-vmbusopsstagedfile", "remove-vmbusopsstagingfolder", "invoke-vmbusopsguest"})


def _spelled(name: str) -> str:
    return _SPELLING.get(name, "-".join(part.capitalize() for part in name.split("-")))


async def get_command(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    for name in sorted(set(host.command_names) | {"get-command"}):
        if name in HOST_ALIASES:
            # As Get-Command lists an alias: an AliasInfo naming the cmdlet it resolves to.
            streams.output(
                SimObject(
                    ("System.Management.Automation.AliasInfo", "System.Management.Automation.CommandInfo",
                     "System.Object"),
                    (("Name", _spelled(name)), ("CommandType", "Alias"),
                     ("ResolvedCommandName", _spelled(HOST_ALIASES[name].casefold())), ("Source", "Hyper-V")),
                    _spelled(name),
                )
            )
            continue
        streams.output(
            SimObject(
                ("System.Management.Automation.CmdletInfo", "System.Management.Automation.CommandInfo",
                 "System.Object"),
                (("Name", _spelled(name)), ("CommandType", "Function" if name in _FUNCTIONS else "Cmdlet"),
                 ("Source", "" if name in _FUNCTIONS else _MODULES.get(name, "Hyper-V"))),
                _spelled(name),
            )
        )


GET_FILE_HASH = HostCmdlet((Param("LiteralPath", 0, aliases=("Path", "PSPath")), Param("Algorithm")), get_file_hash)
GET_COMMAND = HostCmdlet((Param("Name", 0), Param("CommandType")), get_command)
WRITE_STAGED_FILE = HostCmdlet((Param("Path"), Param("Offset"), Param("Data")), write_staged_file)
REMOVE_STAGING_FOLDER = HostCmdlet((Param("Path"),), remove_staging_folder)
