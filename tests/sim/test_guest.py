"""The guest PowerShell subset, run directly against a recording Streams (no protocol)."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from vmbusops.sim.guest import GuestSession
from vmbusops.sim.guest_parse import UnsupportedSyntax, parse_script
from vmbusops.sim.lab import Lab, VMState
from vmbusops.sim.state import HostStore
from vmbusops.sim.streams import InformationMessage, ProgressUpdate, SimError, SimObject


class RecordingStreams:
    """A Streams that keeps every record in order, as (stream, value)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Any]] = []

    @property
    def records_written(self) -> int:
        return len(self.records)

    def output(self, value: Any) -> None:
        self.records.append(("output", value))

    def error(self, error: SimError) -> None:
        self.records.append(("error", error))

    def warning(self, message: str) -> None:
        self.records.append(("warning", message))

    def verbose(self, message: str) -> None:
        self.records.append(("verbose", message))

    def debug(self, message: str) -> None:
        self.records.append(("debug", message))

    def information(self, info: InformationMessage) -> None:
        self.records.append(("information", info))

    def progress(self, update: ProgressUpdate) -> None:
        self.records.append(("progress", update))

    async def checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()

    def of(self, stream: str) -> list[Any]:
        return [v for s, v in self.records if s == stream]


async def run(
    store: HostStore, text: str, *, vm: str = "web01", args: list[Any] | None = None
) -> RecordingStreams:
    spec = store.lab.find(vm)
    assert spec is not None
    streams = RecordingStreams()
    session = GuestSession(spec=spec, store=store, streams=streams, username="Administrator", arguments=args)

    async def emit(value: Any) -> None:
        streams.output(value)

    await session.run_text(text, emit)
    return streams


async def test_write_cmdlets_reach_their_streams_in_order(store: HostStore) -> None:
    s = await run(
        store,
        """
        Write-Output 'out'
        Write-Verbose "v" -Verbose; Write-Warning 'w'; Write-Debug d -Debug
        Write-Error 'bad thing'
        Write-Information -MessageData 'info' -Tags a,b
        Write-Progress -Activity Copying -Status Half -PercentComplete 50
        Write-Progress -Activity Copying -Completed
        """,
    )
    assert [k for k, _ in s.records] == [
        "output", "verbose", "warning", "debug", "error", "information", "progress", "progress",
    ]  # fmt: skip
    error = s.of("error")[0]
    assert error.message == "bad thing"
    assert error.fqid == "Microsoft.PowerShell.Commands.WriteErrorException"
    info = s.of("information")[0]
    assert (info.message_data, info.tags) == ("info", ("a", "b"))
    first, last = s.of("progress")
    assert (first.activity, first.status, first.percent_complete, first.completed) == (
        "Copying",
        "Half",
        50,
        False,
    )
    assert last.completed is True


async def test_strings_variables_and_expansion(store: HostStore) -> None:
    s = await run(
        store,
        """
        $name = 'world'
        "hello $name"
        'no $name'
        "it's ""quoted"" and `t tabbed"
        "$env:COMPUTERNAME/${name}"
        "$args.Count"
        $args[1]
        $args.Count
        """,
        args=["a", "b"],
    )
    assert s.of("output") == [
        "hello world",
        "no $name",
        'it\'s "quoted" and \t tabbed',
        "WEB01/world",
        # Like PowerShell: only the variable expands inside a string.
        "a b.Count",
        "b",
        2,
    ]


async def test_ranges_pipelines_foreach_and_exit(store: HostStore) -> None:
    s = await run(
        store,
        """
        1..3 | ForEach-Object { "item $_" }
        3..1 | % { $_ }
        foreach ($x in 1..2) { Write-Verbose "x=$x" -Verbose }
        $list = @(1, 2, 3)
        $list.Count
        1..2 | foreach -Begin { 'begin' } -Process { $PSItem } -End { 'end' }
        exit 7
        'never'
        """,
    )
    assert s.of("output") == ["item 1", "item 2", "item 3", 3, 2, 1, 3, "begin", 1, 2, "end"]
    assert s.of("verbose") == ["x=1", "x=2"]


async def test_exit_code_is_returned(store: HostStore) -> None:
    spec = store.lab.find("web01")
    assert spec is not None
    streams = RecordingStreams()
    session = GuestSession(spec=spec, store=store, streams=streams, username="Administrator")

    async def emit(value: Any) -> None:
        streams.output(value)

    assert await session.run_text("exit 3", emit) == 3
    assert await session.run_text("'x'", emit) == 0


async def test_services_processes_and_hotfixes(store: HostStore) -> None:
    s = await run(
        store,
        """
        (Get-Service -Name W3SVC).Status
        Get-Service | % Name
        Get-Service NoSuchSvc
        Get-Process w3wp | % Id
        Get-Process nope
        Get-HotFix | % HotFixID
        hostname
        $PSVersionTable.PSVersion
        """,
    )
    assert s.of("output") == ["Running", "W3SVC", "Spooler", 4120, "KB5034439", "WEB01", "5.1.17763.5576"]
    errors = s.of("error")
    assert errors[0].message == "Cannot find any service with service name 'NoSuchSvc'."
    assert errors[0].fqid == "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand"
    assert errors[1].message == (
        'Cannot find a process with the name "nope". Verify the process name and call the cmdlet again.'
    )


async def test_file_cmdlets_on_the_guest_file_system(store: HostStore) -> None:
    s = await run(
        store,
        r"""
        Test-Path C:\inetpub\wwwroot\index.html
        Test-Path 'C:\INETPUB\WWWROOT\INDEX.HTML'
        Test-Path C:\nope.txt
        Get-Content C:\inetpub\wwwroot\index.html
        Set-Content -Path C:\Windows\Temp\new.txt -Value 'line1','line2'
        Get-Content C:\Windows\Temp\new.txt
        (Get-FileHash C:\Windows\Temp\new.txt).Algorithm
        Get-ChildItem C:\Windows\Temp | % Name
        Get-Content C:\missing.txt
        Set-Content C:\no\such\dir\f.txt 'x'
        """,
    )
    out = s.of("output")
    assert out[:6] == [True, True, False, "hello from web01", "line1", "line2"]
    assert out[6] == "SHA256"
    assert out[7:] == ["new.txt"]
    errors = s.of("error")
    assert errors[0].message == "Cannot find path 'C:\\missing.txt' because it does not exist."
    assert errors[0].fqid == "PathNotFound,Microsoft.PowerShell.Commands.GetContentCommand"
    assert errors[1].message == "Could not find a part of the path 'C:\\no\\such\\dir\\f.txt'."


async def test_get_file_hash_matches_hashlib(store: HostStore) -> None:
    import hashlib

    s = await run(
        store, r"Get-FileHash C:\inetpub\wwwroot\index.html; Get-FileHash C:\inetpub\wwwroot\index.html MD5"
    )
    sha, md5 = s.of("output")
    assert isinstance(sha, SimObject)
    assert sha.get("Hash") == hashlib.sha256(b"hello from web01\n").hexdigest().upper()
    assert sha.get("Path") == "C:\\inetpub\\wwwroot\\index.html"
    assert md5.get("Algorithm") == "MD5"
    assert md5.get("Hash") == hashlib.md5(b"hello from web01\n").hexdigest().upper()


async def test_error_action_silently_continue_keeps_errors_off_the_stream(store: HostStore) -> None:
    probe = r"Get-FileHash -LiteralPath 'C:\nope.txt','C:\inetpub\wwwroot\index.html' -Algorithm SHA256"
    loud = await run(store, probe)
    quiet = await run(store, probe + " -ErrorAction SilentlyContinue")
    assert len(loud.of("error")) == 1
    assert quiet.of("error") == []
    assert len(loud.of("output")) == len(quiet.of("output")) == 1


async def test_start_sleep_really_sleeps_and_is_cancellable(store: HostStore) -> None:
    start = trio.current_time()
    await run(store, "Start-Sleep -Milliseconds 120")
    assert trio.current_time() - start >= 0.12
    with trio.move_on_after(0.2) as scope:
        await run(store, "Start-Sleep -Seconds 60")
    assert scope.cancelled_caught


async def test_restart_computer_reboots_the_vm_and_ends_the_script(store: HostStore) -> None:
    s = await run(store, "'before'; Restart-Computer -Force; 'after'")
    assert s.of("output") == ["before"]
    spec = store.lab.find("web01")
    assert spec is not None
    rt = store.runtime(spec)
    assert rt.state is VMState.RUNNING
    assert not rt.booted(store.clock())


@pytest.mark.parametrize(
    ("script", "what"),
    [
        ("if ($true) { 1 }", "'if'"),
        ("1 -eq 1", "-eq"),
        ("$x = @{a=1}", "hashtables"),
        ("'a'.ToUpper()", "unexpected"),
        ("$x.ToUpper()", "method calls"),
        ('"$(Get-Date)"', "subexpressions"),
        ("1 + 1", "operators"),
        ("try { 1 } catch { 2 }", "'try'"),
    ],
)
async def test_unsupported_syntax_is_reported_not_guessed(store: HostStore, script: str, what: str) -> None:
    s = await run(store, script)
    assert s.of("output") == []
    [error] = s.of("error")
    assert error.fqid == "NotSupportedBySimulator"
    assert "does not support" in error.message
    assert what in error.message


async def test_unknown_command_is_command_not_found_and_script_continues(store: HostStore) -> None:
    # (Get-Date, which this used to call, exists on every real guest: it is never unknown.)
    s = await run(store, "Get-Frobnication; 'still here'")
    [error] = s.of("error")
    assert error.fqid == "CommandNotFoundException"
    assert error.message.startswith("The term 'Get-Frobnication' is not recognized")
    assert s.of("output") == ["still here"]


async def test_parameter_errors_in_guest(store: HostStore) -> None:
    s = await run(store, "Write-Verbose -Nope x; Get-FileHash C:\\x -Algorithm SHA999; 'next'")
    first, second = s.of("error")
    assert first.fqid == "NamedParameterNotFound,Microsoft.PowerShell.Commands.WriteVerboseCommand"
    assert second.fqid == "ParameterArgumentValidationError,Microsoft.PowerShell.Commands.GetFileHashCommand"
    assert s.of("output") == ["next"]


def test_parser_accepts_comments_continuations_and_switch_parameters() -> None:
    script = parse_script("Get-ChildItem -Recurse C:\\ `\n  -Filter *.txt # comment\n<# block #> 'x'")
    assert len(script.statements) == 2
    with pytest.raises(UnsupportedSyntax):
        parse_script("'unterminated")


async def test_lab_shape_is_what_tests_assume(lab: Lab) -> None:
    assert [vm.name for vm in lab.vms] == ["web01", "db01", "legacy01", "app01", "flaky01"]


async def test_verbose_and_debug_are_written_only_when_asked_for(store: HostStore) -> None:
    # PowerShell's defaults are SilentlyContinue: nothing without -Verbose / -Debug or a preference.
    s = await run(store, "Write-Verbose quiet; Write-Debug quiet; 'o'")
    assert s.records == [("output", "o")]
    s = await run(store, "Write-Verbose v -Verbose; Write-Debug d -Debug")
    assert s.records == [("verbose", "v"), ("debug", "d")]
    s = await run(
        store,
        "$VerbosePreference = 'Continue'; $DebugPreference = 'Continue'; Write-Verbose v; Write-Debug d; "
        "Write-Verbose off -Verbose:$false; $VerbosePreference = 'SilentlyContinue'; Write-Verbose gone",
    )
    assert s.records == [("verbose", "v"), ("debug", "d")]


async def test_a_verbose_preference_the_simulator_does_not_model_is_refused(store: HostStore) -> None:
    s = await run(store, "$VerbosePreference = 'Inquire'; Write-Verbose v; 'next'")
    assert s.of("verbose") == []
    assert [e.fqid for e in s.of("error")] == ["NotSupportedBySimulator"]
    assert s.of("output") == ["next"]


_ROUND_TRIP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}[+-]\d\d:\d\d"


async def test_get_date_format_o_is_the_guest_clock_as_round_trip_text(lab: Lab, tmp_path: Path) -> None:
    store = HostStore(lab, tmp_path / "state", clock=lambda: 1_796_062_603.641_234)
    s = await run(store, '$t = Get-Date -Format o; Write-Output "at $t"; Get-Date -Format O')
    first, second = s.of("output")
    assert first == f"at {second}" and re.fullmatch(_ROUND_TRIP, second)
    # Seven fraction digits as .NET writes them; the offset says which local time it is.
    assert datetime.fromisoformat(second[:26] + second[27:]).timestamp() == 1_796_062_603.641_234


async def test_get_date_without_format_o_is_refused_not_pretended(store: HostStore) -> None:
    s = await run(store, "Get-Date; Get-Date -Format yyyy; Get-Date -UFormat %s; 'next'")
    errors = s.of("error")
    assert [e.fqid for e in errors] == ["NotSupportedBySimulator"] * 3
    assert s.of("output") == ["next"]


@pytest.mark.pwsh
def test_get_date_format_o_has_the_shape_real_powershell_writes(pwsh_path: str) -> None:
    out = subprocess.run(
        [pwsh_path, "-NoProfile", "-Command", "Get-Date -Format o"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert re.fullmatch(_ROUND_TRIP, out), out
