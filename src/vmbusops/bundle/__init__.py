"""Signed job bundles: the format, keys, the trust policy and the replay store.

The engine calls :func:`accept_bundle` (from a worker thread) and runs what the returned
:class:`AcceptedBundle` describes; nothing else here has side effects beyond the files it is told
to write. See ``docs/adr/0001-bundle-format.md`` for why the format is what it is.
"""

from vmbusops.bundle.manifest import (
    Amount,
    CopyStep,
    DscMode,
    DscStep,
    ExecutionPolicy,
    FileEntry,
    Manifest,
    MissedRunPolicy,
    RebootStep,
    ResumePolicy,
    RetryPolicy,
    Schedule,
    ScriptStep,
    Step,
    StepKind,
    Targets,
    WaitReadyStep,
)
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, load_trust_policy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import (
    DEFAULT_LIMITS,
    AcceptedBundle,
    Limits,
    VerifiedBundle,
    accept_bundle,
    verify_bundle,
)

__all__ = [
    "DEFAULT_LIMITS",
    "AcceptedBundle",
    "Amount",
    "CopyStep",
    "DscMode",
    "DscStep",
    "ExecutionPolicy",
    "FileEntry",
    "Limits",
    "Manifest",
    "MissedRunPolicy",
    "RebootStep",
    "ReplayStore",
    "ResumePolicy",
    "RetryPolicy",
    "Schedule",
    "Scope",
    "ScriptStep",
    "Step",
    "StepKind",
    "Targets",
    "TrustPolicy",
    "TrustedKey",
    "VerifiedBundle",
    "WaitReadyStep",
    "accept_bundle",
    "load_trust_policy",
    "verify_bundle",
]
