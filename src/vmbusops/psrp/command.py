"""What a pipeline runs: commands with typed parameters, piped into statements.

Its own module so that the client (which runs pipelines) and the encoder (which serializes
them) both depend on it, and not on each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Command", "Statement"]


@dataclass(frozen=True, slots=True)
class Command:
    """One command of a pipeline: a cmdlet name with named and positional parameters.

    Parameters are typed values (str, int, bool, lists, psrpcore objects such as PSCredential),
    never script text: the host binds them as PowerShell would, so nothing a user typed can
    change which cmdlet runs.
    """

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    arguments: Sequence[Any] = ()
    #: ``name`` is script text the server parses (PSRP's IsScript), not a command name. Only the
    #: project's own fixed scripts are sent this way; user text stays a parameter value.
    is_script: bool = False

    def __post_init__(self) -> None:
        if self.is_script:
            if not self.name.strip():
                raise ValueError("a script command needs script text")
            return
        if not self.name or any(c.isspace() for c in self.name) or any(c in self.name for c in ";|&{}()$`'\""):
            raise ValueError(f"not a command name: {self.name!r}")


Statement = Sequence[Command]
"""Commands piped into each other: ``A | B | C``."""
