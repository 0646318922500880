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
    └── JournalError

``transient`` says whether retrying the same operation later may succeed; the engine's retry
policy reads it and nothing else.
"""

from __future__ import annotations


class VmbusOpsError(Exception):
    """Root of every error vmbusops raises on purpose."""

    transient: bool = False

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


class NoSuchJobError(ConfigError):
    """The journal has no job with the id given (a usage error: exit code 2)."""


class JobStateError(ConfigError):
    """The job is not in a state that allows what was asked (resume a finished job, take over a
    job a live process owns): a usage error, exit code 2."""


class CredentialStoreError(VmbusOpsError):
    """The local encrypted credential store cannot give what was asked."""


class NoSuchCredentialError(CredentialStoreError):
    """No credential by that name. ``name`` is kept apart from the message, which names the
    store's path: the agent's API says only the name to a remote caller."""

    def __init__(self, message: str, *, name: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.name = name


class TransportError(VmbusOpsError):
    """The connection to the PowerShell host failed; every waiting caller sees it."""

    transient = True


class FramingError(TransportError):
    """The peer wrote bytes that are not valid OutOfProc framing."""

    transient = False


class HostProcessExitedError(TransportError):
    """The PowerShell host process exited or closed its output."""


class HostKeyError(TransportError):
    """A remote host presented a key we do not trust (unknown, or different from the one on record)."""

    transient = False


class HostAuthError(TransportError):
    """A remote host refused the login (wrong key, user, password or certificate)."""

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


class PipelineStoppedError(VmbusOpsError):
    """A pipeline ended in the Stopped state (cancelled, or stopped by a timeout)."""


class HostCommandError(VmbusOpsError):
    """A host-side cmdlet failed in a way that has no more precise class."""

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


class VMNotRunningError(GuestError):
    """The VM exists but is not running, so its guest cannot be reached."""


class CredentialInvalidError(GuestError):
    """The guest refused the credential."""


class GuestServicesDisabledError(GuestError):
    """Copy-VMFile needs the Guest Service Interface integration service, which is off."""


class GuestFileExistsError(GuestError):
    """Copy-VMFile refused to overwrite a guest file (no -Force)."""


class GuestNotReadyError(GuestError):
    """The guest is running but PowerShell Direct does not answer yet."""

    transient = True


class SessionLostError(GuestError):
    """The PowerShell Direct session ended under a running command."""

    transient = True


class BundleError(VmbusOpsError):
    """A job bundle was rejected; nothing from it ran."""


class JournalError(VmbusOpsError):
    """The journal cannot be read or written."""
