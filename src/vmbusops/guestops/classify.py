"""Turning PowerShell error records into classified errors a caller can act on.

Hyper-V and PowerShell Direct report failures as error records whose messages are stable,
documented English text (the PowerShell Direct troubleshooting guide quotes them) and whose
FullyQualifiedErrorIds name the failing cmdlet. We match on both, message first, because the
message is what the documentation promises; the class says what to do next:

==============================  =========================================  ==========
error                           typical text                               retry?
==============================  =========================================  ==========
VMNotFoundError                 "...does not resolve to any virtual        no
                                machine", "unable to find a virtual
                                machine with name"
VMNotRunningError               "...is not in running state", "...the      no
                                virtual machine is in its current state"
CredentialInvalidError          "The credential is invalid."               no
GuestServicesDisabledError      Copy-VMFile failing to initiate the copy    no
                                while the Guest Service Interface is off
GuestFileExistsError            "...The file exists. (0x80070050)"          no
SessionLostError                "A remote session might have ended.",      yes
                                "The Hyper-V socket target process has
                                ended." (the guest's end of the socket
                                went away under a running command)
GuestNotReadyError              the guest has not booted far enough,       yes
                                "A failure occurred while attempting to
                                connect to the target virtual machine."
                                (the session could not be opened)
==============================  =========================================  ==========
"""

from __future__ import annotations

from vmbusops.errors import (
    CredentialInvalidError,
    GuestError,
    GuestFileExistsError,
    GuestNotReadyError,
    HostCommandError,
    SessionLostError,
    VmbusOpsError,
    VMNotFoundError,
    VMNotRunningError,
)
from vmbusops.records import ErrorRecord

_NOT_FOUND = (
    "does not resolve to any virtual machine",
    "does not resolve to a single virtual machine",
    "unable to find a virtual machine with name",
    "was unable to find a virtual machine",
    "unable to find a virtual machine with id",
)
_NOT_RUNNING = (
    "not in running state",
    "is not running",
    "in its current state",
    "virtual machine is off",
    "0x8007139f",
)
_CREDENTIAL = ("credential is invalid", "user name or password is incorrect")
_SESSION_LOST = (
    "a remote session might have ended",
    "the pipe has been ended",
    "the virtual machine has been restarted",
    # HyperVSocketTransportProcessEnded, usually inside "The background process reported an
    # error with the following message: ...".
    "the hyper-v socket target process has ended",
)
_NOT_READY = (
    "not yet ready",
    "guest is not ready",
    "operating system is still starting",
    "no contact with the guest",
    "a failure occurred while attempting to connect to the target virtual machine",
)
_FILE_EXISTS = ("0x80070050", "the file exists")


def classify(vm: str, record: ErrorRecord) -> VmbusOpsError:
    """The classified error for an error record about ``vm``, with the real message kept."""
    text = record.message.lower()
    hint: str | None
    cls: type[GuestError] | None = None
    hint = None
    if any(s in text for s in _CREDENTIAL):
        cls = CredentialInvalidError
        hint = "check the credential reference's user name and password for this guest (vmbusops cred set NAME)"
    elif any(s in text for s in _NOT_FOUND):
        cls = VMNotFoundError
        hint = "list the host's VMs with 'vmbusops vms'; names are matched as Hyper-V knows them"
    elif any(s in text for s in _NOT_RUNNING):
        cls = VMNotRunningError
        hint = "start it first (Start-VM), or leave it out"
    elif any(s in text for s in _SESSION_LOST):
        cls = SessionLostError
    elif any(s in text for s in _NOT_READY):
        cls = GuestNotReadyError
    elif any(s in text for s in _FILE_EXISTS):
        cls = GuestFileExistsError
        hint = "the guest has a file there already: replace it (copy without --no-force), or copy to another path"
    if cls is None:
        return HostCommandError(
            f"{vm}: {record.message}", fqid=record.fqid or None, category=record.category or None
        )
    return cls(f"{vm}: {record.message}", vm=vm, hint=hint, fqid=record.fqid or None)
