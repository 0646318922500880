"""How labctl writes a simulated error record as JSON (its answers and its ``dsc`` stream alike)."""

from __future__ import annotations

from typing import Any

from vmbusops.sim.streams import SimError


def error_json(error: SimError) -> dict[str, Any]:
    """The fields the lab module's ``Write-LabAnswer`` turns back into an ErrorRecord."""
    return {
        "message": error.message,
        "fqid": error.fqid,
        "category": error.category,
        "exception_type": error.exception_type,
        "target_name": error.target_name,
        "target_object": None if error.target_object is None else str(error.target_object),
        "activity": error.activity,
    }
