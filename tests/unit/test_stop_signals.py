"""Which signals stop a vmbusops process cleanly: a hangup too, unless it was started to ignore it."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from vmbusops.stop_signals import stop_signals


@pytest.fixture
def hangup_disposition() -> Iterator[None]:
    before = signal.getsignal(signal.SIGHUP)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_hangup_stops_as_sigterm_does(hangup_disposition: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    assert stop_signals() == [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def test_a_process_started_under_nohup_keeps_ignoring_hangups(hangup_disposition: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    assert stop_signals() == [signal.SIGINT, signal.SIGTERM]
