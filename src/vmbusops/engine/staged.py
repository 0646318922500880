"""A job's bundle files on a remote host's disk, staged once and shared by the job's runs.

Copy-VMFile reads its source from the host. On a local host the extracted bundle already is on
the host's disk; on a remote one (``host.is_remote``) every file the job's steps copy (each step's
executor says which: :func:`vmbusops.engine.executors.copied_files`) is staged with
:func:`~vmbusops.guestops.staging.stage_files` into one per-job folder the first time a run needs
one of them. Fifty runs of the job then copy from the same verified files, and the folder lives
exactly as long as the job: :class:`JobStaging` is entered around the job's runs and its exit
removes the folder, whether the job succeeded, failed or was cancelled.

Staging lazily rather than before the runs start means that a staging failure is the failure
of the step that needed the files, retried by that step's policy like any transient error,
and that a job whose steps copy nothing never touches the host's disk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from vmbusops.engine.source import JobSource
from vmbusops.guestops.staging import StageFile, stage_files

if TYPE_CHECKING:
    from vmbusops.guestops.host import HyperVHost


class JobStaging:
    """Host paths for one job's bundle files: the files themselves on a local host, staged
    copies (made at first use, removed on exit) on a remote one."""

    def __init__(self, host: HyperVHost, job_id: int, source: JobSource, bundle_paths: Sequence[str]) -> None:
        self._host = host
        self._job_id = job_id
        self._source = source
        self._bundle_paths = list(bundle_paths)
        self._stack = AsyncExitStack()
        self._lock = trio.Lock()
        self._staged: dict[str, str] | None = None
        #: How many times the files were put on the host (one per job when all goes well).
        self.uploads = 0

    async def __aenter__(self) -> JobStaging:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._staged = None
        await self._stack.aclose()

    async def host_path(self, local: Path) -> str:
        """Where Copy-VMFile finds the bundle file extracted at ``local``."""
        if not self._host.is_remote:
            return str(local)
        async with self._lock:
            if self._staged is None:
                self._staged = await self._stage()
        staged = self._staged.get(str(local))
        if staged is None:
            # Not a file the steps declare (cannot happen for copy and dsc steps): the host's
            # own on-demand staging still gets it there.
            return str(local)
        return staged

    async def _stage(self) -> dict[str, str]:
        manifest = self._source.manifest
        hashes = {entry.path: entry.sha256 for entry in manifest.files}
        items = [
            StageFile(
                self._source.local_path(path),
                sha256=hashes.get(path),
                name=f"{i:04d}_{_flat_name(path)}",
            )
            for i, path in enumerate(self._bundle_paths, 1)
        ]
        paths = await self._stack.enter_async_context(stage_files(self._host, items, job=str(self._job_id)))
        self.uploads += 1
        return {str(item.local): path for item, path in zip(items, paths, strict=True)}


def _flat_name(bundle_path: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", bundle_path.rsplit("/", 1)[-1]) or "file"
