"""What simulated cmdlets write: values, error records and the seven streams.

Cmdlets (host or guest) never see psrpcore. They write plain Python values and the small
dataclasses below to a :class:`Streams`; the PSRP server turns them into PSRP messages. That keeps
the Hyper-V and guest simulation testable without a protocol, and keeps every byte of the wire
format in one place (``vmbusops.sim.server`` and ``vmbusops.sim.clixml``).

Values are ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``/``tuple`` (an array),
``dict`` (a hashtable) or :class:`SimObject` (an object with type names and note properties).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SimObject:
    """A PowerShell object: its type names (most derived first) and note properties."""

    type_names: tuple[str, ...]
    properties: tuple[tuple[str, Any], ...] = ()
    to_string: str | None = None

    def get(self, name: str, default: Any = None) -> Any:
        folded = name.casefold()
        for key, value in self.properties:
            if key.casefold() == folded:
                return value
        return default


@dataclass(frozen=True, slots=True, kw_only=True)
class SimError:
    """An ErrorRecord as PowerShell would build it.

    ``category`` is a System.Management.Automation.ErrorCategory name; ``exception_type`` the
    full .NET type name of the exception, whose short name PowerShell reports as the reason.
    """

    message: str
    fqid: str
    category: str = "NotSpecified"
    exception_type: str = "System.Exception"
    target_name: str = ""
    target_object: Any = None
    activity: str = ""
    hresult: int = -2146233087  # COR_E_EXCEPTION, what a plain .NET exception carries

    @property
    def reason(self) -> str:
        return self.exception_type.rsplit(".", 1)[-1]


class TerminatingError(Exception):
    """A cmdlet stopped the whole pipeline (the pipeline ends Failed with this record)."""

    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressUpdate:
    activity: str
    status: str = "Processing"
    activity_id: int = 0
    parent_activity_id: int = -1
    percent_complete: int = -1
    seconds_remaining: int = -1
    current_operation: str | None = None
    completed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationMessage:
    message_data: Any
    source: str = ""
    tags: tuple[str, ...] = field(default=())
    # Empty means "the machine the pipeline runs on"; a guest fills in its own names.
    computer: str = ""
    user: str = ""


class Streams(Protocol):
    """Where a running cmdlet writes. Writes never block; ``checkpoint`` does."""

    def output(self, value: Any) -> None: ...

    def error(self, error: SimError) -> None: ...

    def warning(self, message: str) -> None: ...

    def verbose(self, message: str) -> None: ...

    def debug(self, message: str) -> None: ...

    def information(self, info: InformationMessage) -> None: ...

    def progress(self, update: ProgressUpdate) -> None: ...

    @property
    def records_written(self) -> int:
        """How many records this pipeline has written so far (fault injection counts them)."""
        ...

    async def checkpoint(self) -> None:
        """Let the writer catch up (backpressure) and let cancellation in."""
        ...


class ForwardingStreams:
    """Streams that pass every write to ``inner``; a view that changes one stream overrides it."""

    def __init__(self, inner: Streams) -> None:
        self._inner = inner

    def output(self, value: Any) -> None:
        self._inner.output(value)

    def error(self, error: SimError) -> None:
        self._inner.error(error)

    def warning(self, message: str) -> None:
        self._inner.warning(message)

    def verbose(self, message: str) -> None:
        self._inner.verbose(message)

    def debug(self, message: str) -> None:
        self._inner.debug(message)

    def information(self, info: InformationMessage) -> None:
        self._inner.information(info)

    def progress(self, update: ProgressUpdate) -> None:
        self._inner.progress(update)

    @property
    def records_written(self) -> int:
        return self._inner.records_written

    async def checkpoint(self) -> None:
        await self._inner.checkpoint()
