"""The LCM verbose-line parser on published transcripts (sources in transcripts/README.md)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vmbusops.dsc.lcm import (
    NEED_DATA,
    JobCompleted,
    LcmError,
    LcmParser,
    LcmWarning,
    LineStream,
    Message,
    MethodCompleted,
    MethodInvoked,
    Operation,
    OperationEnded,
    OperationSkipped,
    OperationStarted,
    RebootRequired,
    ResourceMessage,
    classify_line,
    parse_transcript,
)

HERE = Path(__file__).parent / "transcripts"


def transcript(name: str) -> list[object]:
    return list(parse_transcript((HERE / name).read_text(encoding="utf-8").splitlines()))


def test_job_verbose_collection_from_the_docs() -> None:
    # learn.microsoft.com/powershell/dsc/managing-nodes/apply-get-test: $job.ChildJobs[0].Verbose
    events = transcript("apply_job_verbose.txt")
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "MethodInvoked",
        "Message",
        "OperationStarted",
        "OperationStarted",
        "OperationStarted",
        "ResourceMessage",
        "OperationEnded",
        "OperationSkipped",
        "OperationEnded",
        "OperationEnded",
        "OperationEnded",
        "MethodCompleted",
    ]
    assert isinstance(events[0], MethodInvoked) and events[0].method == "SendConfigurationApply"
    start_set = events[2]
    assert isinstance(start_set, OperationStarted)
    assert (start_set.operation, start_set.resource, start_set.node) == (Operation.SET, None, "SERVER01")
    assert events[3] == OperationStarted(
        text="[SERVER01]: LCM:  [ Start  Resource ]  [[File]SampleFile]",
        node="SERVER01",
        operation=Operation.RESOURCE,
        resource="[File]SampleFile",
    )
    message = events[5]
    assert isinstance(message, ResourceMessage)
    assert message.resource == "[File]SampleFile"
    assert message.message == "The destination object was found and no action is required."
    test_end = events[6]
    assert isinstance(test_end, OperationEnded)
    assert (test_end.operation, test_end.resource, test_end.seconds) == (
        Operation.TEST,
        "[File]SampleFile",
        0.037,
    )
    skipped = events[7]
    assert isinstance(skipped, OperationSkipped) and skipped.operation is Operation.SET
    total = events[10]
    assert isinstance(total, OperationEnded)
    assert (total.operation, total.resource, total.seconds) == (Operation.SET, None, 0.24)
    assert isinstance(events[11], MethodCompleted)


def test_console_wrapped_lines_are_joined_back() -> None:
    # learn.microsoft.com/powershell/dsc/resources/get-test-set: the console wrapped at 120 columns,
    # hard-splitting a module path ("...\MSFT" / "_ServiceResource.psm1").
    events = transcript("useexisting_wrapped.txt")
    invoked = next(e for e in events if isinstance(e, MethodInvoked))
    assert invoked.method == "ApplyConfiguration"
    assert invoked.text.endswith("'namespaceName' = root/Microsoft/Windows/DesiredStateConfiguration'.")
    arrived = next(e for e in events if e.text.startswith("An LCM method call"))
    assert arrived.text.endswith("with user sid S-1-5-21-124525095-708259637-1543119021-1282804.")
    engine = next(e for e in events if isinstance(e, Message) and e.scope == "DSCEngine")
    assert engine.text.endswith(
        "DscResources\\MSFT_ServiceResource\\MSFT_ServiceResource.psm1 in force mode."
    ), engine.text
    wrapped = next(e for e in events if isinstance(e, ResourceMessage))
    assert wrapped.message == "Importing the module MSFT_ServiceResource in force mode."
    done = events[-1]
    assert isinstance(done, JobCompleted) and done.seconds == 1.379
    # The "PS>" prompt and the blank line are not LCM lines: they pass through, not dropped.
    assert isinstance(events[0], Message) and events[0].text.startswith("PS> Start-DSCConfiguration")
    skips = [e for e in events if isinstance(e, OperationSkipped)]
    assert [s.resource for s in skips] == ["[Service]Spooler"]


def test_reboot_required_and_durations_from_a_real_feature_removal() -> None:
    # PowerShell.org, "Using Azure Desired State Configuration - Part IV" (2017): timestamped log lines.
    events = transcript("reboot_windowsfeature.txt")
    reboots = [e for e in events if isinstance(e, RebootRequired)]
    assert [r.stream for r in reboots] == [LineStream.VERBOSE, LineStream.WARNING]
    ends = [e for e in events if isinstance(e, OperationEnded) and e.resource == "[WindowsFeature]RemoveUI"]
    assert [(e.operation, e.seconds) for e in ends] == [
        (Operation.TEST, 9.598),
        (Operation.SET, 62.709),
        (Operation.RESOURCE, None),
    ]
    warning = next(e for e in events if isinstance(e, LcmWarning))
    assert warning.resource == "[WindowsFeature]RemoveUI"
    assert warning.message == "You must restart this server to finish the removal process."
    # A line of the extension's own log, unknown to the parser, comes through whole.
    unknown = [e for e in events if isinstance(e, Message) and "Settings handler" in e.text]
    assert len(unknown) == 1 and unknown[0].text.endswith("\\Status\\0.status)")
    assert isinstance(events[-1], JobCompleted) and events[-1].seconds == 75.071


def test_console_error_blocks_become_errors_with_their_ids() -> None:
    # "Issue with PMPR (issue27)": Set-TargetResource fails; errors print unprefixed with "+" details.
    events = transcript("resource_error.txt")
    errors = [e for e in events if isinstance(e, LcmError)]
    assert [e.fqid for e in errors] == [
        "ParameterArgumentValidationErrorEmptyStringNotAllowed,Resolve-Location,"
        "Microsoft.PowerShell.PackageManagement.Cmdlets.RegisterPackageSource",
        "ProviderOperationExecutionFailure",
        "MI RESULT 1",
    ]
    assert errors[0].message == "Cannot bind argument to parameter 'Location' because it is an empty string."
    assert errors[1].message.startswith("PowerShell DSC resource MSFT_PackageManagementSource  failed")
    assert errors[1].message.endswith("'Location' because it is an empty string.")
    assert errors[2].message.startswith("The SendConfigurationApply function did not succeed.")
    end = next(e for e in events if isinstance(e, OperationEnded))
    assert (end.resource, end.seconds) == ("[PackageManagementSource]PSGallery", 2.265)
    assert end.text.endswith("in 2.2650 seconds.")  # the wrapped "seconds." joined back
    assert not any(e.text == "seconds." for e in events)
    completed = next(e for e in events if isinstance(e, Message) and e.scope == "")
    assert completed.text.endswith("[] Consistency check completed.")
    warnings = [e for e in events if isinstance(e, LcmWarning)]
    assert warnings[0].message.endswith("with 'Trusted' policy\"")
    assert isinstance(events[-1], Message) and events[-1].text == "PS C:\\Users\\Administrator>"


def test_what_if_lines_keep_their_stream() -> None:
    # learn.microsoft.com/powershell/dsc/resources/authoringresourcemof (Supporting -WhatIf)
    events = transcript("whatif_file.txt")
    assert events[0].stream is LineStream.WHATIF and isinstance(events[0], OperationStarted)
    path_msg = next(e for e in events if isinstance(e, Message) and e.scope == "C:\\test\\test.txt")
    assert path_msg.text.endswith("Creating and writing contents and setting attributes.")
    sets = [e for e in events if isinstance(e, OperationEnded) and e.operation is Operation.SET]
    assert [e.seconds for e in sets] == [0.018, None, 0.105]


def test_records_from_psrp_are_never_joined() -> None:
    parser = LcmParser()
    assert parser.next_event() is NEED_DATA
    parser.receive_record("verbose", "[WEB01]: LCM:  [ Start  Resource ]  [[Registry]Motd]")
    parser.receive_record("verbose", "short tail that must not join")
    parser.receive_record("warning", "[WEB01]:                            [] A reboot is required to progress further. Please reboot the system.")
    parser.receive_record("error", "PowerShell DSC resource MSFT_FileDirectoryConfiguration failed")
    events = list(parser.events())
    assert [type(e).__name__ for e in events] == ["OperationStarted", "Message", "RebootRequired", "LcmError"]
    assert parser.next_event() is NEED_DATA


def test_test_results_and_localised_decimals() -> None:
    ended = classify_line("[SRV1]: LCM:  [ End    Test     ]  [[WindowsFeature]DSCServiceFeature] True in 0,3130 seconds.")
    assert isinstance(ended, OperationEnded)
    assert (ended.result, ended.seconds) == (True, 0.313)
    # Event Viewer truncates long lines: the duration is still read.
    cut = classify_line("[SRV1]: LCM:  [ End    Test     ]  [[WindowsFeature]X] False in 0.3130 sec...")
    assert isinstance(cut, OperationEnded) and cut.result is False


def test_unknown_and_malformed_lines_pass_through() -> None:
    for text in ("", "hello", "[SERVER]: LCM:  [ Start  Set", "[SERVER]: LCM:  [ End Set ] [[x] in y", "[[[", "]]]:"):
        event = classify_line(text)
        assert event.text == text
    events = parse_transcript(["totally unknown", "   ", "another one"])
    assert [e.text for e in events] == ["totally unknown", "another one"]


def test_events_serialise_to_json() -> None:
    event = classify_line("[N]: LCM:  [ End    Set      ]  [[File]F]  in 1.5000 seconds.")
    assert event.to_json() == {
        "event": "OperationEnded",
        "text": "[N]: LCM:  [ End    Set      ]  [[File]F]  in 1.5000 seconds.",
        "node": "N",
        "stream": "verbose",
        "operation": "Set",
        "resource": "[File]F",
        "seconds": 1.5,
        "result": None,
    }


_line = st.one_of(
    st.text(max_size=200),
    st.builds(
        "".join,
        st.lists(
            st.sampled_from(
                ["VERBOSE: ", "WARNING: ", "[N]: ", "LCM:  ", "[ Start  ", "[ End    ", "Set ", "]", "[", "[[File]x]",
                 " in ", "0.5", " seconds.", "    + ", "FullyQualifiedErrorId : ", "\n", "\r", " " * 30, "A reboot is required to progress further"]
            ),
            max_size=12,
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(list(LineStream)), _line), max_size=30))
def test_never_raises_and_never_loses_a_record(items: list[tuple[bool, LineStream, str]]) -> None:
    parser = LcmParser()
    records = 0
    out = []
    for as_record, stream, text in items:
        if as_record:
            parser.receive_record(stream, text)
            records += 1
        else:
            parser.receive_line(text)
        out.extend(parser.events())
    parser.close()
    out.extend(parser.events())
    assert parser.next_event() is NEED_DATA
    # Every PSRP record gives exactly one event.
    if all(r for r, _, _ in items):
        assert len(out) == records
    for event in out:
        event.to_json()
