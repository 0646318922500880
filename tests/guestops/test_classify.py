"""The classifier against the error records PowerShell Direct really sends (as the simulator sends them)."""

from __future__ import annotations

import pytest

from vmbusops.errors import (
    CredentialInvalidError,
    GuestNotReadyError,
    HostCommandError,
    SessionLostError,
    VmbusOpsError,
)
from vmbusops.guestops.classify import classify
from vmbusops.records import ErrorRecord
from vmbusops.sim import pserrors
from vmbusops.sim.streams import SimError


def _record(error: SimError) -> ErrorRecord:
    return ErrorRecord(
        message=error.message, fqid=error.fqid, category=error.category, exception_type=error.exception_type
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pserrors.session_connect_failed("web01"), GuestNotReadyError),
        (pserrors.socket_process_ended("web01"), SessionLostError),
        (pserrors.remote_session_ended("web01"), SessionLostError),
        (pserrors.credential_invalid("web01"), CredentialInvalidError),
    ],
)
def test_powershell_direct_failures_are_classified(error: SimError, expected: type[VmbusOpsError]) -> None:
    classified = classify("web01", _record(error))
    assert type(classified) is expected
    assert error.message in str(classified)


@pytest.mark.parametrize(
    "message",
    [
        "A failure occurred while attempting to connect to the target virtual machine.",
        "The Hyper-V socket target process has ended.",
        '"The Hyper-V socket target process has ended."',
    ],
)
def test_the_new_session_failures_are_transient(message: str) -> None:
    classified = classify("web01", ErrorRecord(message=message, fqid="PSSessionStateBroken"))
    assert isinstance(classified, GuestNotReadyError | SessionLostError)
    assert classified.transient


def test_a_guest_that_merely_mentions_a_virtual_machine_is_not_a_session_failure() -> None:
    classified = classify("web01", ErrorRecord(message="could not connect to the target machine"))
    assert type(classified) is HostCommandError
