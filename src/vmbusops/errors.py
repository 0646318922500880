"""One exception hierarchy for the whole product.

Every layer raises one of these, translating foreign exceptions at its boundary with
``raise X from exc``; the command line maps them to exit codes in one place
(``vmbusops.cli.exitcodes``). Messages say what was wrong and what to do about it, and
never carry a secret::

    VmbusOpsError
    ├── ConfigError                 bad configuration, lab file or argument
    ├── CredentialStoreError        the local credential store: missing name, bad passphrase
    ├── TransportError              the PowerShell host process / connection failed
    │   ├── FramingError            the peer wrote something that is not OutOfProc framing
    │   ├── HostProcessExitedError  the child process died or closed its output
    │   ├── HostKeyError            a remote host's key is unknown or changed (not retried)
    │   ├── HostAuthError           a remote host refused our login (not retried)
    │   └── HostDownError           the agent's host connection is down, being reopened
    ├── PSRPError                   the peer spoke PSRP but refused or broke (pool broken, ...)
    ├── PipelineStoppedError        a pipeline was stopped (cancelled or timed out)
    │   └── PipelineTimedOutError   stopped because it ran past its timeout
    ├── HostCommandError            a host-side cmdlet failed for a reason not listed below
    ├── GuestError                  something about one VM; carries ``vm``
    │   ├── VMNotFoundError
    │   ├── VMNotRunningError
    │   ├── CredentialInvalidError
    │   ├── GuestServicesDisabledError
    │   ├── GuestFileExistsError
    │   ├── GuestNotReadyError      (transient)
    │   └── SessionLostError        (transient)
    ├── BundleError                 signed bundle rejected (subtypes in vmbusops.bundle)
    └── JournalError                the journal or another store under $VMBUSOPS_HOME (disk full)

``transient`` says whether retrying the same operation later may succeed; the engine's retry
policy reads it and nothing else.

``code`` is the error's stable, machine-readable name (a :class:`FailureCode`): what a failed run
or step carries in the journal, the command line's JSON, the API and its events, whatever the
message says. :class:`FailureCode` lists every code in one place, those of failures that are not
exceptions (an exit code, a timeout, a cancellation) included; the README's table describes them.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class FailureCode(enum.StrEnum):
    """Why a run, a step or a guest failed, for programs: stable names, never reworded."""

    #: The guest's script exited with a non-zero exit code (``exit N``).
    EXIT_CODE = "ExitCode"
    #: The guest's script wrote error records or ended in a terminating error.
    SCRIPT_FAILED = "ScriptFailed"
    #: A step or the run did not finish within its timeout.
    TIMEOUT = "Timeout"
    #: The run was not started within the job's delivery timeout.
    DELIVERY_TIMEOUT = "DeliveryTimeout"
    #: Cancelled (``jobs cancel``, Ctrl-C, DELETE on the API) or the pipeline was stopped.
    CANCELLED = "Cancelled"
    #: Not started: more runs failed than the job's max errors.
    SKIPPED = "Skipped"
    #: Interrupted (the process running it stopped) and not run again, as its resume policy says.
    ABANDONED = "Abandoned"
    #: A guarded change failed (a step, the health check, a timeout, a cancel, a crash) and the
    #: VM was put back to the checkpoint taken before it (the run is ``rolled-back``).
    ROLLED_BACK = "RolledBack"
    #: A guarded span did not start: checkpoints disabled, not enough room, or no production
    #: checkpoint where the bundle's policy requires one.
    CHECKPOINT_REFUSED = "CheckpointRefused"
    #: A checkpoint could not be restored or removed; it is kept, the VM left as it is.
    CHECKPOINT_FAILED = "CheckpointFailed"
    VM_NOT_FOUND = "VMNotFound"
    VM_NOT_RUNNING = "VMNotRunning"
    CREDENTIAL_INVALID = "CredentialInvalid"
    GUEST_SERVICES_DISABLED = "GuestServicesDisabled"
    GUEST_FILE_EXISTS = "GuestFileExists"
    #: A file copied into the guest does not have the SHA-256 its bundle lists.
    GUEST_FILE_MISMATCH = "GuestFileMismatch"
    GUEST_NOT_READY = "GuestNotReady"
    SESSION_LOST = "SessionLost"
    #: DSC or Windows Update in the guest failed or did not converge.
    CONFIGURATION_FAILED = "ConfigurationFailed"
    #: Another failure about one guest.
    GUEST_ERROR = "GuestError"
    #: The PowerShell host (or the agent's connection to it) cannot be reached or went away.
    HOST_UNREACHABLE = "HostUnreachable"
    HOST_KEY_REJECTED = "HostKeyRejected"
    HOST_AUTH_FAILED = "HostAuthFailed"
    #: The PowerShell peer broke the protocol or refused the runspace pool or pipeline.
    PROTOCOL_ERROR = "ProtocolError"
    #: A host-side cmdlet failed for a reason that has no more precise code.
    HOST_COMMAND_FAILED = "HostCommandFailed"
    BUNDLE_REJECTED = "BundleRejected"
    #: A bundle rejected because its id was accepted before (on this host, or by another fleet job).
    REPLAYED_BUNDLE = "ReplayedBundle"
    CONFIG_ERROR = "ConfigError"
    CREDENTIAL_NOT_FOUND = "CredentialNotFound"
    CREDENTIAL_STORE = "CredentialStoreError"
    JOURNAL_ERROR = "JournalError"
    #: The fleet's broker (NATS) cannot be reached, or refused what was asked.
    BROKER_UNREACHABLE = "BrokerUnreachable"
    #: Not started: a run of the job's canary wave did not succeed.
    CANARY_FAILED = "CanaryFailed"
    #: Not started: no live fleet host runs the VM (it was never seen, or only on dead hosts).
    NOT_PLACED = "NotPlaced"
    #: Anything else (a bug: the message says more).
    INTERNAL = "InternalError"


class VmbusOpsError(Exception):
    """Root of every error vmbusops raises on purpose."""

    transient: bool = False
    code: ClassVar[FailureCode] = FailureCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(VmbusOpsError):
    """Configuration, lab file or command-line input is wrong."""

    code = FailureCode.CONFIG_ERROR


class NoSuchJobError(ConfigError):
    """The journal has no job with the id given (a usage error: exit code 2)."""


class JobStateError(ConfigError):
    """The job is not in a state that allows what was asked (resume a finished job, take over a
    job a live process owns): a usage error, exit code 2."""


class CredentialStoreError(VmbusOpsError):
    """The local encrypted credential store cannot give what was asked."""

    code = FailureCode.CREDENTIAL_STORE


class NoSuchCredentialError(CredentialStoreError):
    """No credential by that name. ``name`` is kept apart from the message, which names the
    store's path: the agent's API says only the name to a remote caller."""

    code = FailureCode.CREDENTIAL_NOT_FOUND

    def __init__(self, message: str, *, name: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.name = name


class TransportError(VmbusOpsError):
    """The connection to the PowerShell host failed; every waiting caller sees it."""

    code = FailureCode.HOST_UNREACHABLE

    transient = True


class FramingError(TransportError):
    """The peer wrote bytes that are not valid OutOfProc framing."""

    code = FailureCode.PROTOCOL_ERROR

    transient = False


class HostProcessExitedError(TransportError):
    """The PowerShell host process exited or closed its output."""


class HostKeyError(TransportError):
    """A remote host presented a key we do not trust (unknown, or different from the one on record)."""

    code = FailureCode.HOST_KEY_REJECTED

    transient = False


class HostAuthError(TransportError):
    """A remote host refused the login (wrong key, user, password or certificate)."""

    code = FailureCode.HOST_AUTH_FAILED

    transient = False


class HostDownError(TransportError):
    """The agent's connection to its host died and is being reopened; nothing was started.

    ``since`` is when it went down (seconds since the epoch), ``retry_after`` how many seconds
    until the next attempt to reopen it (a hint for a client's ``Retry-After``)."""

    def __init__(
        self, message: str, *, host: str, since: float, retry_after: float, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.host = host
        self.since = since
        self.retry_after = retry_after


class PSRPError(VmbusOpsError):
    """The peer speaks PSRP but the runspace pool or a pipeline broke or was refused."""

    code = FailureCode.PROTOCOL_ERROR


class PipelineStoppedError(VmbusOpsError):
    """A pipeline ended in the Stopped state (cancelled, or stopped by a timeout)."""

    code = FailureCode.CANCELLED


class PipelineTimedOutError(PipelineStoppedError):
    """A pipeline was stopped because it ran past its timeout."""

    code = FailureCode.TIMEOUT


class HostCommandError(VmbusOpsError):
    """A host-side cmdlet failed in a way that has no more precise class."""

    code = FailureCode.HOST_COMMAND_FAILED

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        fqid: str | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.fqid = fqid
        self.category = category


class GuestError(VmbusOpsError):
    """Something about one guest VM."""

    code = FailureCode.GUEST_ERROR

    def __init__(
        self,
        message: str,
        *,
        vm: str,
        hint: str | None = None,
        fqid: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.vm = vm
        self.fqid = fqid


class VMNotFoundError(GuestError):
    """No VM on the host has that name or id."""

    code = FailureCode.VM_NOT_FOUND


class VMNotRunningError(GuestError):
    """The VM exists but is not running, so its guest cannot be reached."""

    code = FailureCode.VM_NOT_RUNNING


class CredentialInvalidError(GuestError):
    """The guest refused the credential."""

    code = FailureCode.CREDENTIAL_INVALID


class GuestServicesDisabledError(GuestError):
    """Copy-VMFile needs the Guest Service Interface integration service, which is off."""

    code = FailureCode.GUEST_SERVICES_DISABLED


class GuestFileExistsError(GuestError):
    """Copy-VMFile refused to overwrite a guest file (no -Force)."""

    code = FailureCode.GUEST_FILE_EXISTS


class GuestNotReadyError(GuestError):
    """The guest is running but PowerShell Direct does not answer yet."""

    code = FailureCode.GUEST_NOT_READY

    transient = True


class SessionLostError(GuestError):
    """The PowerShell Direct session ended under a running command."""

    code = FailureCode.SESSION_LOST

    transient = True


class BundleError(VmbusOpsError):
    """A job bundle was rejected; nothing from it ran."""

    code = FailureCode.BUNDLE_REJECTED


class JournalError(VmbusOpsError):
    """The journal, or another store under $VMBUSOPS_HOME (the replay store, a bundle being
    extracted), cannot be read or written: exit code 3."""

    code = FailureCode.JOURNAL_ERROR
