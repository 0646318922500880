"""Guest text is hostile: what the live view writes to a terminal carries no control characters.
Progress is a status line on a terminal and a line per tenth elsewhere; logs show its percentage."""

from __future__ import annotations

import io

import pytest

from vmbusops.cli.output import RecordPrinter, terminal_safe
from vmbusops.cli.record_lines import record_text
from vmbusops.engine.journal import RecordView
from vmbusops.records import (
    ErrorRecord,
    GuestRecord,
    OutputRecord,
    ProgressRecord,
    display_text,
    record_to_json,
)

HOSTILE = "a\x1b[31mRED\x1b]0;TITLE\x07b\rover\x9bc\tend"


def test_control_characters_become_visible_escapes() -> None:
    assert terminal_safe(HOSTILE) == "a\\x1b[31mRED\\x1b]0;TITLE\\x07b\\x0dover\\x9bc\tend"
    assert terminal_safe("two\nlines") == "two\nlines"
    # Bidirectional overrides and isolates reorder what follows them on the line, unseen.
    assert terminal_safe("invoice\u202egpj.exe \u2066x\u2069") == "invoice\\u202egpj.exe \\u2066x\\u2069"
    assert terminal_safe("عربى \u200f mixed") == "عربى \u200f mixed"  # marks alone reorder nothing: kept


def test_the_live_view_writes_guest_text_without_control_characters() -> None:
    out = io.StringIO()
    printer = RecordPrinter(out=out)
    printer.emit(GuestRecord(vm="web01", seq=1, time=0.0, record=OutputRecord(value=HOSTILE)))
    printer.emit(GuestRecord(vm="web01", seq=2, time=0.0, record=ErrorRecord(message="x\x1b[2Jy")))
    text = out.getvalue()
    assert not any(ch in text for ch in "\x1b\x07\r\x9b"), repr(text)
    assert "x\\x1b[2Jy" in text


def progress_record(vm: str, seq: int, percent: int, *, activity: str = "Copying", completed: bool = False) -> GuestRecord:
    record = ProgressRecord(activity=activity, status_description="files", percent_complete=percent, completed=completed)
    return GuestRecord(vm=vm, seq=seq, time=0.0, record=record)


def test_off_a_terminal_an_activity_gets_a_line_per_tenth_and_its_end() -> None:
    out = io.StringIO()
    printer = RecordPrinter(out=out, vm_width=5)
    for pct in range(101):
        printer.emit(progress_record("web01", pct + 1, pct))
        printer.emit(progress_record("web02", pct + 1, pct // 2, activity="Installing"))
    printer.emit(progress_record("web01", 200, 100, completed=True))
    printer.emit(GuestRecord(vm="web01", seq=201, time=0.0, record=OutputRecord(value="done")))
    lines = out.getvalue().splitlines()
    web01 = [line for line in lines if line.startswith("web01")]
    assert web01 == [
        *(f"web01 | PROGRESS: Copying: files {pct}%" for pct in range(0, 101, 10)),
        "web01 | PROGRESS: Copying: files 100% (completed)",
        "web01 | done",
    ]
    assert [line.rsplit(" ", 1)[-1] for line in lines if line.startswith("web02")] == [
        f"{pct}%" for pct in range(0, 51, 10)
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_one_status_line_rewritten_and_gone_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = Terminal()
    printer = RecordPrinter(out=out, vm_width=5)
    for pct in range(0, 100, 5):
        printer.emit(progress_record("web01", pct + 1, pct))
    printer.emit(GuestRecord(vm="web01", seq=200, time=0.0, record=OutputRecord(value="a line")))
    printer.emit(progress_record("web01", 201, 99))
    printer.flush()
    text = out.getvalue()
    # What a terminal shows once every carriage return and erase has been applied.
    screen = [part.split("\r")[-1].replace("\x1b[K", "") for part in text.split("\n")]
    assert screen == ["web01 | a line", ""]
    assert text.count("\n") == 1  # no progress record took a line of its own
    assert "PROGRESS: Copying: files 95%" in text


def test_logs_show_the_progress_percentage_the_live_view_shows() -> None:
    record = ProgressRecord(activity="Copying", status_description="files", percent_complete=40)
    content = record_to_json(record)
    view = RecordView(run_id=1, vm="web01", seq=1, step=None, attempt=1, stream="progress", time=0.0, content=content)
    assert record_text(view) == display_text(record) == "Copying: files 40%"


def test_the_live_run_table_shows_states_not_markup_and_guest_text_is_not_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.live import Live

    from vmbusops.cli.engine_cmds import Progress
    from vmbusops.engine import RecordArrived, RunChanged, State

    monkeypatch.setenv("COLUMNS", "100")
    out = Terminal()
    progress = Progress(as_json=False, out=out)
    assert progress.live_mode
    progress.created(1)
    with Live(progress.table(), console=progress.console, auto_refresh=False, transient=True) as live:
        progress.live = live
        progress(RunChanged(1, "web01", State.FAILED, "[bold]step[/]", "boom"))
        # A record is printed with markup off, which also draws the table again (the first frame
        # that showed "[red]failed[/]").
        record = GuestRecord(vm="web01", seq=1, time=0.0, record=OutputRecord(value="[red]not markup[/]"))
        progress(RecordArrived(1, record))
    text = out.getvalue()
    assert "failed" in text and "[red]failed" not in text
    assert "[red]not markup[/]" in text
    assert "[bold]step[/]" in text  # a step name is text, shown as it is


def test_under_the_live_run_table_an_activity_gets_a_line_per_tenth() -> None:
    from rich.live import Live

    from vmbusops.cli.engine_cmds import Progress
    from vmbusops.engine import RecordArrived

    out = Terminal()
    progress = Progress(as_json=False, out=out)
    progress.created(1)
    with Live(progress.table(), console=progress.console, auto_refresh=False, transient=True) as live:
        progress.live = live
        for pct in range(100):
            progress(RecordArrived(1, progress_record("web01", pct + 1, pct)))
    assert out.getvalue().count("PROGRESS: Copying: files") == 10
