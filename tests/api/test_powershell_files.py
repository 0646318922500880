"""The shipped PowerShell parses (tree-sitter's PowerShell grammar; no PowerShell runs here), and
the manifest exports exactly the module's public functions. Where a PowerShell 7 is found,
tests/powershell/*.Tests.ps1 judge the same files with PowerShell's own parser and engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    ROOT / "host_agent" / "powershell" / "VmbusOps.psm1",
    ROOT / "host_agent" / "powershell" / "VmbusOps.psd1",
    ROOT / "host_agent" / "service" / "install.ps1",
    ROOT / "host_agent" / "VmbusOps.pssc",
    ROOT / "host_agent" / "VmbusOpsHost" / "VmbusOpsHost.psd1",
    ROOT / "host_agent" / "VmbusOpsHost" / "RoleCapabilities" / "VmbusOpsHost.psrc",
    ROOT / "src" / "vmbusops" / "guestops" / "powershell" / "Invoke-VmbusOpsGuest.ps1",
]
PUBLIC = {
    "Submit-VmbusOpsJob", "Get-VmbusOpsJob", "Wait-VmbusOpsJob", "Receive-VmbusOpsJobOutput", "Stop-VmbusOpsJob",
}


def parse(source: bytes) -> tree_sitter.Tree:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language())).parse(source)


def error_lines(tree: tree_sitter.Tree) -> list[int]:
    out: list[int] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            out.append(node.start_point[0] + 1)
        stack.extend(node.children)
    return sorted(out)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parses(path: Path) -> None:
    assert error_lines(parse(path.read_bytes())) == []


def test_the_parser_does_report_broken_scripts() -> None:
    assert error_lines(parse(b"function Get-X { if ($a) { 'x' \n"))


def test_manifest_exports_the_public_functions() -> None:
    module = (ROOT / "host_agent" / "powershell" / "VmbusOps.psm1").read_text()
    manifest = (ROOT / "host_agent" / "powershell" / "VmbusOps.psd1").read_text()
    defined = set(re.findall(r"^function ([A-Za-z]+-[A-Za-z]+)", module, re.M))
    assert defined >= PUBLIC
    exported = set(
        re.findall(r"'([A-Za-z]+-VmbusOps[A-Za-z]*)'", manifest.split("FunctionsToExport")[1].split("\n")[0])
    )
    assert exported == PUBLIC
    for name in PUBLIC:
        body = module.split(f"function {name} {{", 1)[1]
        assert body.lstrip().startswith("<#") and ".SYNOPSIS" in body.split("#>")[0], name
