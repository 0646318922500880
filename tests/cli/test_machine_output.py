"""Output read by programs and kept in files: nothing wrapped or cut when stdout is not a terminal,
the same keys and ISO 8601 times in every JSON line, a failure ``code``, and whole lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.clirun import vmbusops


def test_tables_are_not_cut_or_wrapped_off_a_terminal(make_lab: Callable[..., Any]) -> None:
    make_lab()
    proc = vmbusops("vms", env={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert len(rows) == 6  # a header and a row per VM: nothing wrapped onto a line of its own
    assert all(len(row.split()[-1]) == 36 for row in rows[1:]), rows  # each VM's whole id
    assert "…" not in proc.stdout
    assert "\x1b[" not in proc.stdout
