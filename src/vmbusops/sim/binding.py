"""Parameter binding as PowerShell does it, for host cmdlets and guest cmdlets alike.

Names match case-insensitively, exactly or by unique prefix, or by alias; positional arguments
fill the positional parameters in order; common parameters (-Verbose, -ErrorAction, ...) are
accepted and ignored. Failures carry PowerShell's own ParameterBindingException texts.

A parameter with a ``kind`` other than ``object`` is converted as PowerShell's binder converts a
value for a compiled cmdlet's parameter of that .NET type, argument by argument in the order
given, with the errors pwsh 7.6.9 sends over PSRP (measured): ``[string]``, ``[string[]]``,
``[switch]``, ``[int]``, ``[guid]`` / ``[guid[]]``, ``[pscredential]`` and ``[scriptblock]``.
PowerShell never converts a string to a ScriptBlock and deserializes a sent ScriptBlock as a
string, so no PSRP client can bind ``[scriptblock]``: every value is refused; likewise a kind
``live:<.NET type>`` (a Hyper-V VirtualMachine or VMSnapshot parameter), which only a live object
of that type binds.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmbusops.sim import pserrors
from vmbusops.sim.streams import SimError


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    position: int | None = None
    switch: bool = False
    aliases: tuple[str, ...] = ()
    # How the binder converts a value (see the module docstring); "object" takes it as it comes.
    kind: str = "object"
    # The parameter sets it belongs to (none named: every set of the cmdlet).
    sets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParamSet:
    """One of a cmdlet's parameter sets: its name and the parameters it makes mandatory."""

    name: str
    mandatory: tuple[str, ...] = ()


COMMON_PARAMETERS = (
    "Verbose",
    "Debug",
    "ErrorAction",
    "WarningAction",
    "InformationAction",
    "ErrorVariable",
    "WarningVariable",
    "InformationVariable",
    "OutVariable",
    "OutBuffer",
    "PipelineVariable",
)


@functools.lru_cache(maxsize=256)
def _index(params: tuple[Param, ...]) -> tuple[dict[str, list[Param]], tuple[tuple[str, Param], ...]]:
    """A cmdlet's parameters by case-folded name and alias, and its folded names for prefixes.

    Built once per parameter set: every invocation of a cmdlet would otherwise fold every name.
    """
    exact: dict[str, list[Param]] = {}
    for p in params:
        for key in (p.name.casefold(), *(a.casefold() for a in p.aliases)):
            hits = exact.setdefault(key, [])
            if all(h is not p for h in hits):
                hits.append(p)
    return exact, tuple((p.name.casefold(), p) for p in params)


class BindingError(Exception):
    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


def bind(
    params: tuple[Param, ...],
    fq_name: str,
    args: list[tuple[str | None, Any]],
    text: Callable[[Any], str] = str,
) -> dict[str, Any]:
    """Bind (name or None, value) pairs to ``params``; raise BindingError as PowerShell would."""
    bound: dict[str, Any] = {}
    positional: list[Any] = []
    by_name, prefixes = _index(params)
    for name, value in args:
        if name is None:
            positional.append(value)
            continue
        folded = name.casefold()
        matches = by_name.get(folded) or [p for key, p in prefixes if key.startswith(folded)]
        if not matches:
            common = [c for c in COMMON_PARAMETERS if c.casefold().startswith(folded)]
            if common:
                bound[common[0]] = value  # kept under its full name; -ErrorAction is honoured
                continue
            raise BindingError(pserrors.parameter_not_found(fq_name, name))
        if len(matches) > 1:
            candidates = " ".join("-" + p.name for p in matches)
            raise BindingError(
                SimError(
                    message="Parameter cannot be processed because the parameter name "
                    f"'{name}' is ambiguous. Possible matches include: {candidates}.",
                    fqid=f"AmbiguousParameter,{fq_name}",
                    category="InvalidArgument",
                    exception_type="System.Management.Automation.ParameterBindingException",
                )
            )
        param = matches[0]
        bound[param.name] = value if param.kind == "object" else convert(param, value, fq_name, text)
    open_positions = sorted(
        (p for p in params if p.position is not None and p.name not in bound), key=lambda p: p.position or 0
    )
    for value in positional:
        if not open_positions:
            raise BindingError(
                SimError(
                    message=f"A positional parameter cannot be found that accepts argument '{text(value)}'.",
                    fqid=f"PositionalParameterNotFound,{fq_name}",
                    category="InvalidArgument",
                    exception_type="System.Management.Automation.ParameterBindingException",
                )
            )
        param = open_positions.pop(0)
        bound[param.name] = value if param.kind == "object" else convert(param, value, fq_name, text)
    return bound


_BINDING = "System.Management.Automation.ParameterBindingException"
_PS_TYPES = {
    "string": "System.String",
    "switch": "System.Management.Automation.SwitchParameter",
    "int": "System.Int32",
    "guid": "System.Guid",
    "scriptblock": "System.Management.Automation.ScriptBlock",
}


def _net_type(value: Any) -> str:
    """The .NET type name PowerShell's messages give a deserialized value."""
    if isinstance(value, bool):
        return "System.Boolean"
    if isinstance(value, int):
        return "System.Int32"
    if isinstance(value, str):
        return "System.String"
    if isinstance(value, list | tuple):
        return "System.Collections.ArrayList"
    return "System.Object"


def _cannot_convert(param: Param, fq_name: str, message: str, *, no_message: bool = True) -> BindingError:
    return BindingError(
        SimError(
            message=message,
            fqid=f"{'CannotConvertArgumentNoMessage' if no_message else 'CannotConvertArgument'},{fq_name}",
            category="InvalidArgument",
            exception_type=_BINDING,
        )
    )


def _guid(param: Param, value: Any, fq_name: str, text: Callable[[Any], str]) -> str:
    raw = text(value)
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        raise _cannot_convert(
            param,
            fq_name,
            f"Cannot bind parameter '{param.name}'. Cannot convert value \"{raw}\" to type \"System.Guid\". "
            'Error: "Unrecognized Guid format."',
        ) from None


def convert(param: Param, value: Any, fq_name: str, text: Callable[[Any], str] = str) -> Any:
    """``value`` as the parameter's .NET type, or BindingError as PowerShell's binder raises it."""
    kind = param.kind
    if kind == "strings":
        return None if value is None else [text(v) for v in value] if isinstance(value, list) else [text(value)]
    if kind == "string":
        if isinstance(value, list):
            raise _cannot_convert(
                param,
                fq_name,
                f"Cannot convert '{text(value)}' to the type 'System.String' required by parameter "
                f"'{param.name}'. Specified method is not supported.",
                no_message=False,
            )
        return None if value is None else text(value)
    if kind == "switch":
        if value is None or isinstance(value, bool | int):
            return bool(value)
        raise _cannot_convert(
            param,
            fq_name,
            f"Cannot convert '{_net_type(value)}' to the type '{_PS_TYPES['switch']}' required by parameter "
            f"'{param.name}'. ",
            no_message=False,
        )
    if kind == "int":
        if isinstance(value, bool | int) and -(2**31) <= int(value) < 2**31:
            return int(value)
        raw = text(value)
        try:
            number = int(raw.strip())
        except ValueError:
            reason = f"The input string '{raw}' was not in a correct format."
        else:
            if -(2**31) <= number < 2**31:
                return number
            reason = "Value was either too large or too small for an Int32."
        raise _cannot_convert(
            param,
            fq_name,
            f"Cannot bind parameter '{param.name}'. Cannot convert value \"{raw}\" to type \"System.Int32\". "
            f'Error: "{reason}"',
        )
    if kind == "guid":
        return None if value is None else _guid(param, value, fq_name, text)
    if kind == "guids":
        if value is None:
            return None
        return [_guid(param, v, fq_name, text) for v in (value if isinstance(value, list) else [value])]
    if kind == "credential":
        if hasattr(value, "UserName") and hasattr(value, "Password"):
            return value
        if value is None or isinstance(value, str):
            # A real host would ask the client's host UI for the credential; the simulator never
            # prompts, and fails as PowerShell does when it cannot.
            detail = (
                "A command that prompts the user failed because the host program or the command type "
                "does not support user interaction. The host was attempting to request confirmation "
                "with the following message: Enter your credentials."
            )
        else:
            detail = "userName"
        raise BindingError(
            SimError(
                message=f"Cannot process argument transformation on parameter '{param.name}'. {detail}",
                fqid=f"ParameterArgumentTransformationError,{fq_name}",
                category="InvalidData",
                exception_type="System.Management.Automation.ParameterBindingArgumentTransformationException",
            )
        )
    if kind == "scriptblock":
        if value is None:
            raise BindingError(
                SimError(
                    message=f"Cannot validate argument on parameter '{param.name}'. The argument is null. "
                    "Provide a valid value for the argument, and then try running the command again.",
                    fqid=f"ParameterArgumentValidationError,{fq_name}",
                    category="InvalidData",
                    exception_type="System.Management.Automation.ParameterBindingValidationException",
                )
            )
        raise _cannot_convert(
            param,
            fq_name,
            f"Cannot bind parameter '{param.name}'. Cannot convert the \"{text(value)}\" value of type "
            f'"{_net_type(value)}" to type "{_PS_TYPES["scriptblock"]}".',
        )
    if kind.startswith("live:"):
        # A live object of a module's own .NET type (a Hyper-V VirtualMachine, VMSnapshot...): no
        # PSRP client can send one (what arrives is a string or a Deserialized.* property bag), so
        # the binder converts nothing to it.
        raise _cannot_convert(
            param,
            fq_name,
            f"Cannot bind parameter '{param.name}'. Cannot convert the \"{text(value)}\" value of type "
            f'"{_net_type(value)}" to type "{kind.removeprefix("live:")}".',
        )
    raise ValueError(f"unknown parameter kind {kind!r}")


def choose_set(
    bound: dict[str, Any], params: tuple[Param, ...], sets: tuple[ParamSet, ...], fq_name: str
) -> str:
    """The parameter set the bound parameters select (the first of ``sets`` is the default), as
    PowerShell's binder chooses it; BindingError when none or several fit, or one misses a mandatory one.

    A set fits when every bound parameter belongs to it. Of several that fit, the default wins, else
    the only one whose mandatory parameters are all bound."""
    member = {p.name: p.sets for p in params}
    given = [n for n in bound if n in member]
    fits = [s for s in sets if all(not member[n] or s.name in member[n] for n in given)]
    complete = [s for s in fits if all(bound.get(m) is not None for m in s.mandatory)]
    chosen = None
    if fits and fits[0] is sets[0]:
        chosen = fits[0]
    elif len(complete) == 1:
        chosen = complete[0]
    elif len(fits) == 1:
        chosen = fits[0]
    if chosen is None:
        raise BindingError(
            SimError(
                message="Parameter set cannot be resolved using the specified named parameters. One or more "
                "parameters issued cannot be used together or an insufficient number of parameters were provided.",
                fqid=f"AmbiguousParameterSet,{fq_name}",
                category="InvalidArgument",
                exception_type=_BINDING,
            )
        )
    require(bound, fq_name, *chosen.mandatory)
    return chosen.name


def require(bound: dict[str, Any], fq_name: str, *names: str) -> None:
    missing = [n for n in names if n not in bound or bound[n] is None]
    if missing:
        raise BindingError(pserrors.missing_mandatory(fq_name, missing))
