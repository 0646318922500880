"""The guest PowerShell subset's values and the ways a script's control flow unwinds.

Values are what ``vmbusops.sim.streams`` describes (``None``, ``bool``, ``int``, ``float``, ``str``,
lists, hashtables, :class:`~vmbusops.sim.streams.SimObject`) plus :class:`ScriptBlockValue`; the
helpers convert them as PowerShell converts them (``to_text`` is PowerShell's string conversion).
The exceptions are how ``exit``, ``throw``, ``break``/``continue`` and errors that end a statement
travel up through the evaluator (``vmbusops.sim.guest``) and the cmdlets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vmbusops.sim.guest_parse import Script
from vmbusops.sim.streams import SimError, SimObject

#: Where a pipeline stage sends each object it outputs: the next stage, or the pipeline's output.
Emit = Callable[[Any], Awaitable[None]]
#: The input of a stage that starts its pipeline: ``process(NO_INPUT)`` runs it once.
NO_INPUT = object()


class ScriptExit(Exception):
    """``exit`` ran, or the guest is restarting: the script ends here."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class GuestRestarting(ScriptExit):
    """The guest is going down under the session: no script file boundary stops this one."""


class StatementError(Exception):
    """The statement cannot run; its error is written and the script goes on.

    Unless a ``try`` encloses the running script (the guest invoker's, around each step): then,
    as in PowerShell, the error ends the script and goes to the ``catch``.
    """

    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


class ScriptTerminated(Exception):
    """A terminating error (``throw``, an error under ``-ErrorAction Stop``): the script ends."""

    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


class LoopBreak(Exception):
    """``break``: unwinds to the innermost loop (or out of the script, as in PowerShell)."""


class LoopContinue(Exception):
    """``continue``: unwinds to the innermost loop's next turn (or out of the script)."""


def thrown_error(value: Any) -> SimError:
    """The ErrorRecord PowerShell makes for ``throw <value>`` (pwsh 7.6.9, measured)."""
    if value is None:
        return SimError(
            message="ScriptHalted",
            fqid="ScriptHalted",
            category="OperationStopped",
            exception_type="System.Management.Automation.RuntimeException",
        )
    message = to_text(value)
    return SimError(
        message=message,
        fqid=message,
        category="OperationStopped",
        exception_type="System.Management.Automation.RuntimeException",
        target_name=message,
        target_object=message,
    )


@dataclass(frozen=True, slots=True)
class ScriptBlockValue:
    """A ``{ ... }`` literal: a script block value, run by ForEach-Object."""

    body: Script
    text: str = ""


def to_text(value: Any) -> str:
    """PowerShell's string conversion of a value ($OFS is a space)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(to_text(v) for v in value)
    if isinstance(value, dict):
        return "System.Collections.Hashtable"
    if isinstance(value, SimObject):
        return value.to_string if value.to_string is not None else value.type_names[0]
    if isinstance(value, ScriptBlockValue):
        return value.text
    return str(value)


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise StatementError(
        SimError(
            message=f'Cannot convert value "{to_text(value)}" to type "System.Int32". '
            'Error: "Input string was not in a correct format."',
            fqid="InvalidCastFromStringToInteger",
            category="InvalidArgument",
            exception_type="System.Management.Automation.RuntimeException",
        )
    )


def to_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(to_text(value))
    except ValueError:
        return float(to_int(value))


def enumerate_value(value: Any) -> list[Any]:
    """What a pipeline sends on for a value: arrays are unrolled, everything else is one item."""
    if isinstance(value, list | tuple):
        return list(value)
    if value is None:
        return []
    return [value]


def member(value: Any, name: str) -> Any:
    folded = name.casefold()
    if isinstance(value, SimObject):
        return value.get(name)
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).casefold() == folded:
                return item
        return None
    if isinstance(value, str) and folded == "length":
        return len(value)
    if isinstance(value, list | tuple):
        if folded in ("count", "length"):
            return len(value)
        # Member enumeration: $list.Name is every item's Name.
        return [member(v, name) for v in value]
    return None


def index(value: Any, i: int) -> Any:
    if isinstance(value, list | tuple | str):
        try:
            return value[i]
        except IndexError:
            return None
    return value if i in (0, -1) and value is not None else None

