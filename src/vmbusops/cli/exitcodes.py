"""Exit codes, and the one place errors become them.

=====  =====================================================================
code   meaning
=====  =====================================================================
0      success: every guest did what was asked
1      a guest reported errors (error records, a failed or stopped pipeline)
2      usage error: bad arguments, configuration or input file, a job, VM or run that does not
       exist, a job in a state that does not allow what was asked, a $VMBUSOPS_HOME that cannot
       be used at all (not a directory, cannot be created)
3      host or transport failure: the PowerShell host (or an agent) could not be reached, or a
       store under $VMBUSOPS_HOME (the journal, the replay store, a bundle being extracted)
       cannot be written, e.g. the disk is full
4      a bundle was rejected: nothing from it ran; or ``receipt verify`` refused a receipt
5      a guarded change failed and every run that did not succeed was rolled back: its VM is
       as it was before the change, and no checkpoint is left (``run``, ``jobs resume``,
       ``submit --follow``)
130    interrupted (Ctrl-C); guest pipelines were stopped first
141    the reader of the output went away (``| head``), as for a command killed by SIGPIPE
=====  =====================================================================

:data:`EXIT_CODES_HELP` says the same in a line each; every command that reaches a host, a guest
or an agent shows it under its ``--help`` (click's epilog), so no command lists only some.
"""

from __future__ import annotations

from vmbusops.errors import (
    BundleError,
    ConfigError,
    CredentialStoreError,
    GuestError,
    PipelineStoppedError,
    PSRPError,
    TransportError,
    VmbusOpsError,
)

OK = 0
GUEST_ERRORS = 1
USAGE = 2
HOST_FAILURE = 3
BUNDLE_REJECTED = 4
ROLLED_BACK = 5
INTERRUPTED = 130
READER_GONE = 141

_MEANING = {
    OK: "success: every guest did what was asked",
    GUEST_ERRORS: "a guest failed (an error record, a non-zero exit, a failed step or run)",
    USAGE: "usage error: arguments, configuration, input file, or a job or VM that does not exist",
    HOST_FAILURE: "host or transport failure (the host or agent cannot be reached), or a full disk",
    BUNDLE_REJECTED: "a bundle was rejected (nothing from it ran), or a receipt did not verify",
    ROLLED_BACK: "a guarded change failed and was rolled back (every run not successful is rolled-back)",
    INTERRUPTED: "interrupted (Ctrl-C); guest pipelines were stopped first",
    READER_GONE: "the reader of the output went away (| head), as for SIGPIPE",
}
#: The exit codes for a command's ``--help`` (``\b`` keeps click from rewrapping the lines).
EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in _MEANING.items())


def exit_code_for(exc: VmbusOpsError) -> int:
    if isinstance(exc, ConfigError | CredentialStoreError):
        return USAGE
    if isinstance(exc, BundleError):
        return BUNDLE_REJECTED
    if isinstance(exc, TransportError | PSRPError):
        return HOST_FAILURE
    if isinstance(exc, GuestError | PipelineStoppedError):
        return GUEST_ERRORS
    return HOST_FAILURE


def job_exit_code(run_states: list[str]) -> int:
    """A finished job's exit code from its runs' states: 0 when all succeeded; 5 when every
    other one rolled back; else 1."""
    others = [s for s in run_states if s != "success"]
    if not others:
        return OK
    return ROLLED_BACK if all(s == "rolled-back" for s in others) else GUEST_ERRORS
