"""The host checks every Copy-VMFile destination with the manifest's own guest path rule, so
`guest copy` and DSC files refuse exactly what `bundle verify` refuses, before the cmdlet runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmbusops.errors import HostCommandError
from vmbusops.guest_paths import guest_path_problem
from vmbusops.guestops.connect import open_host

HOSTILE = [
    "C:..\\x",
    "x.txt",
    "NUL",
    "\\\\server\\share\\x.txt",
    "\\\\.\\C:\\x.txt",
    "\\\\?\\C:\\x.txt",
    "C:\\Temp\\x.txt:hidden",
    "C:\\Temp\\nul.txt",
    "C:\\Temp\\COM1",
    "C:\\Temp\\..\\x.txt",
    "C:\\Temp\\x.txt\nC:\\Windows\\y",
    "C:\\Temp\\x.txt.",
]


async def test_the_host_refuses_every_path_the_manifest_refuses(
    make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    lab = make_lab()
    src = tmp_path / "a.txt"
    src.write_text("x", encoding="utf-8")
    async with open_host("sim", config=lab.config) as host:
        for destination in HOSTILE:
            problem = guest_path_problem(destination)
            assert problem is not None, destination
            with pytest.raises(HostCommandError) as caught:
                await host.copy_to_guest("web01", str(src), destination)
            assert caught.value.message == f"web01: guest destination {destination!r} {problem}"
            assert caught.value.hint and "C:\\Temp\\file.txt" in caught.value.hint
        await host.copy_to_guest("web01", str(src), "C:\\Temp\\a.txt")  # and a plain one still works
