"""Parameter binding as PowerShell does it, for host cmdlets and guest cmdlets alike.

Names match case-insensitively, exactly or by unique prefix, or by alias; positional arguments
fill the positional parameters in order; common parameters (-Verbose, -ErrorAction, ...) are
accepted and ignored. Failures carry PowerShell's own ParameterBindingException texts.
"""

from __future__ import annotations

import functools
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
        bound[matches[0].name] = value
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
        bound[open_positions.pop(0).name] = value
    return bound


def require(bound: dict[str, Any], fq_name: str, *names: str) -> None:
    missing = [n for n in names if n not in bound or bound[n] is None]
    if missing:
        raise BindingError(pserrors.missing_mandatory(fq_name, missing))
