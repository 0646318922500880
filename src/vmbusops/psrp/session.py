"""What the host operations need from a PowerShell session, whatever carries it.

:class:`~vmbusops.psrp.client.RunspacePool` satisfies :class:`HostSession` over every transport
(a child process, an SSH subsystem, WinRM through :class:`~vmbusops.psrp.winrm.WinRMTransport`):
run statements of structured commands, yield their records live as :mod:`vmbusops.records`
types, stop a pipeline that is left early, say when the session broke under us. The host operations depend on this protocol only, so
a session of another shape can stand in without touching them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from vmbusops.errors import VmbusOpsError
from vmbusops.records import PipelineStateRecord, Record

if TYPE_CHECKING:
    from vmbusops.psrp.client import Command


class RecordStream(Protocol):
    """A running pipeline: iterate for records; the last one is a PipelineStateRecord."""

    @property
    def final(self) -> PipelineStateRecord | None: ...

    @property
    def exit_code(self) -> int | None:
        """The N of a top-level ``exit N`` in the pipeline (also on the final state record)."""
        ...

    def __aiter__(self) -> AsyncIterator[Record]: ...

    async def __anext__(self) -> Record: ...

    async def take(self) -> list[Record]:
        """Every record queued now (at least one); [] once the last one was taken."""
        ...

    async def collect(self) -> list[Record]: ...

    async def stop(self, *, timeout: float = ...) -> None: ...


class HostSession(Protocol):
    """A PowerShell session on a Hyper-V host that runs structured commands."""

    @property
    def description(self) -> str: ...

    def invoke(self, statements: Iterable[Sequence[Command]]) -> AbstractAsyncContextManager[RecordStream]: ...

    async def run(self, statements: Iterable[Sequence[Command]], **kwargs: Any) -> list[Record]: ...

    async def wait_broken(self) -> VmbusOpsError:
        """Wait until the session breaks under us; return the error its callers see."""
        ...
