"""Exit codes, and the one place errors become them.

=====  =====================================================================
code   meaning
=====  =====================================================================
0      success: every guest did what was asked
1      a guest reported errors (error records, a failed or stopped pipeline)
2      usage error: bad arguments, configuration or input file
3      host or transport failure: the PowerShell host could not be reached, or a store under
       $VMBUSOPS_HOME (the journal, the replay store) cannot be written, e.g. the disk is full
4      a bundle was rejected: nothing from it ran
130    interrupted (Ctrl-C); guest pipelines were stopped first
=====  =====================================================================
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
INTERRUPTED = 130


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
