"""Host-side file cmdlets the agent uses to verify staged files: ``Get-FileHash``.

A remote agent stages files onto the host's disk before Copy-VMFile reads them, then asks the
host to hash them. The simulated host's disk is the real local file system (the simulator runs
on the machine it pretends to be), so this hashes real files, as the real cmdlet does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from vmbusops.sim.binding import BindingError, Param, require
from vmbusops.sim.guest import to_text
from vmbusops.sim.streams import SimError, SimObject, Streams

UTILITY = "Microsoft.PowerShell.Commands"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest().upper()


async def get_file_hash(b: dict[str, Any], streams: Streams, fq: str) -> None:
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


def host_file_cmdlets() -> dict[str, tuple[tuple[Param, ...], Callable[..., Any]]]:
    return {
        "get-filehash": (
            (Param("LiteralPath", 0, aliases=("Path", "PSPath")), Param("Algorithm")),
            get_file_hash,
        ),
    }
