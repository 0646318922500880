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
from vmbusops.guestops.dsc import GuestFile, copy_files
from vmbusops.records import OutputRecord

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


async def test_dsc_files_are_judged_before_any_is_copied(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    """A DSC step copies its files in batched pipelines, not through ``copy_to_guest``: the rule is
    applied there too, to every destination before the first copy."""
    lab = make_lab()
    src = tmp_path / "a.txt"
    src.write_text("x", encoding="utf-8")
    good = GuestFile(src, "C:\\Modules\\Demo\\a.txt", "0" * 64)
    bad = GuestFile(src, "C:\\Modules\\Demo\\nul.txt", "0" * 64)
    async with open_host("sim", config=lab.config) as host:
        with pytest.raises(HostCommandError) as caught:
            await copy_files(host, "web01", [good, bad])
        assert caught.value.message == f"web01: guest destination {bad.guest!r} {guest_path_problem(bad.guest)}"
        assert await exists(host, good.guest, lab) == [False]  # nothing was copied
        assert await copy_files(host, "web01", [good]) == 1
        assert await exists(host, good.guest, lab) == [True]


async def exists(host: Any, path: str, lab: Any) -> list[object]:
    records, outcome = await host.run_in_guest("web01", f"Test-Path -Path '{path}'", lab.credential())
    assert outcome.ok, outcome
    return [r.record.value for r in records if isinstance(r.record, OutputRecord)]
