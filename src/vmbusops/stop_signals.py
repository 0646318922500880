"""The signals that stop a vmbusops process cleanly: Ctrl-C, SIGTERM and a hangup.

SIGHUP comes when the terminal a command runs in goes away: an SSH connection that drops, a
window closed. Left to Python's default it kills the process where it stands. No guest pipeline
gets its PSRP stop signal, the journal's last batch is not written, and the children that live
in sessions of their own are left running with nobody to stop them: the host process, and for
``vmbusops demo --fleet`` its nats-server, controller and agents. So a hangup stops the process
as SIGTERM does, unless the process was started to ignore it (``nohup``, or a service manager
that sets it so); that choice is kept.
"""

from __future__ import annotations

import signal

__all__ = ["stop_signals"]


def stop_signals() -> list[int]:
    """The signals to receive for a clean stop here: SIGINT, SIGTERM and SIGHUP where they exist,
    SIGHUP only when it is not ignored. Call it before receiving them (the choice is read then)."""
    found: list[int] = [signal.SIGINT]
    term = getattr(signal, "SIGTERM", None)
    if term is not None:
        found.append(term)
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        found.append(hangup)
    return found
