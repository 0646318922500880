"""Why a bundle was rejected, one class per reason.

Every rejection is a :class:`vmbusops.errors.BundleError` (exit code 4): nothing from the bundle
ran, nothing was kept, nothing was recorded. Problems with the host owner's own files (the trust
policy, a key file, a bundle source directory being built) are configuration errors instead
(exit code 2)::

    BundleError
    ├── ArchiveError                    the file is not a bundle archive we accept
    │   ├── NotATarError                not a tar archive at all
    │   ├── CompressedBundleError       gzip / bzip2 / xz / zstd / zip: refused unread
    │   ├── TruncatedBundleError        ends inside a header, a member or before the end marker
    │   ├── EnvelopeMissingError        the first member is not the envelope
    │   └── EnvelopeTooLargeError       the envelope member is over the size limit
    ├── EnvelopeError                   the envelope is not well-formed DSSE of our type
    ├── SignatureError
    │   ├── UntrustedSignerError        no signature from a key the trust policy knows
    │   ├── BadSignatureError           a trusted key's signature does not verify
    │   └── ThresholdNotMetError        fewer trusted signers than the policy demands
    ├── ManifestError                   the manifest breaks the schema
    │   ├── UnknownFieldError
    │   └── UnknownStepKindError
    ├── DocumentsError                  a dsc step's MOF cannot be applied (found at acceptance)
    ├── FreshnessError
    │   ├── ExpiredBundleError
    │   ├── NotYetValidError            issued in the future (beyond the allowed clock skew)
    │   ├── VersionRollbackError        version lower than the last accepted for its name
    │   └── ReplayedBundleError         this bundle id was accepted before (code ReplayedBundle)
    ├── ScopeError                      signers may not do this
    │   ├── TargetOutOfScopeError
    │   ├── CredentialOutOfScopeError
    │   ├── StepKindOutOfScopeError
    │   └── TrustExpiredError           the scope that would allow it has ended
    └── MemberError                     one archive member is wrong; carries ``member``
        ├── UnsafePathError             absolute, ``..``, odd characters
        ├── LinkMemberError             symlink or hard link
        ├── SpecialMemberError          device, FIFO, directory, extended header, unknown type
        ├── UnexpectedMemberError       not listed in the manifest
        ├── DuplicateMemberError
        ├── MissingMemberError
        ├── MemberSizeError             size differs from the manifest
        ├── DigestMismatchError         SHA-256 differs from the manifest
        └── LimitExceededError          total size, member count or trailing bytes over limits

    ConfigError
    ├── TrustPolicyError                trust.toml cannot be read or breaks its schema
    ├── KeyFileError                    a key file cannot be read, or the passphrase is wrong
    └── BundleSourceError               bundle.toml or the files it names are wrong
"""

from __future__ import annotations

from vmbusops.errors import BundleError, ConfigError, FailureCode

__all__ = [
    "ArchiveError",
    "BadSignatureError",
    "BundleError",
    "BundleSourceError",
    "CompressedBundleError",
    "CredentialOutOfScopeError",
    "DigestMismatchError",
    "DocumentsError",
    "DuplicateMemberError",
    "EnvelopeError",
    "EnvelopeMissingError",
    "EnvelopeTooLargeError",
    "ExpiredBundleError",
    "FreshnessError",
    "KeyFileError",
    "LimitExceededError",
    "LinkMemberError",
    "ManifestError",
    "MemberError",
    "MemberSizeError",
    "MissingMemberError",
    "NotATarError",
    "NotYetValidError",
    "ReplayedBundleError",
    "ScopeError",
    "SignatureError",
    "SpecialMemberError",
    "StepKindOutOfScopeError",
    "TargetOutOfScopeError",
    "ThresholdNotMetError",
    "TruncatedBundleError",
    "TrustExpiredError",
    "TrustPolicyError",
    "UnexpectedMemberError",
    "UnknownFieldError",
    "UnknownStepKindError",
    "UnsafePathError",
    "UntrustedSignerError",
    "VersionRollbackError",
]


class _RejectedBundle(BundleError):
    """Adds where the failure is: the bundle (file name), and a member or key when there is one.

    Sans-IO code does not know the file name; the verifier fills ``bundle`` in on the way out.
    """

    default_hint: str | None = "do not run this bundle; ask its author for a freshly built and signed one"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        bundle: str | None = None,
        member: str | None = None,
        keyid: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint or self.default_hint)
        self.bundle = bundle
        self.member = member
        self.keyid = keyid

    def __str__(self) -> str:
        text = super().__str__()
        return f"bundle {self.bundle}: {text}" if self.bundle else text


class ArchiveError(_RejectedBundle):
    """The file is not a bundle archive that vmbusops accepts."""


class NotATarError(ArchiveError):
    pass


class CompressedBundleError(ArchiveError):
    pass


class TruncatedBundleError(ArchiveError):
    pass


class EnvelopeMissingError(ArchiveError):
    pass


class EnvelopeTooLargeError(ArchiveError):
    pass


class EnvelopeError(_RejectedBundle):
    """The envelope is not well-formed DSSE carrying our manifest type."""

    default_hint = "rebuild the bundle with `vmbusops bundle build` and sign it again"


class SignatureError(_RejectedBundle):
    pass


class UntrustedSignerError(SignatureError):
    pass


class BadSignatureError(SignatureError):
    pass


class ThresholdNotMetError(SignatureError):
    pass


class ManifestError(_RejectedBundle):
    """The signed manifest does not follow the schema."""

    default_hint = (
        "the author must fix bundle.toml and rebuild; if the field is new, upgrade vmbusops on this host"
    )


class DocumentsError(_RejectedBundle):
    """A dsc step's documents cannot be applied: its MOF does not parse, or its meta-configuration
    reboots the guest in a step that does not allow reboots (:mod:`vmbusops.dsc.documents`)."""

    default_hint = "the author must fix the configuration, rebuild and sign again"


class UnknownFieldError(ManifestError):
    pass


class UnknownStepKindError(ManifestError):
    pass


class FreshnessError(_RejectedBundle):
    pass


class ExpiredBundleError(FreshnessError):
    pass


class NotYetValidError(FreshnessError):
    pass


class VersionRollbackError(FreshnessError):
    pass


class ReplayedBundleError(FreshnessError):
    code = FailureCode.REPLAYED_BUNDLE


class ScopeError(_RejectedBundle):
    """Every signature verified, but the signers may not do what the manifest asks."""


class TargetOutOfScopeError(ScopeError):
    pass


class CredentialOutOfScopeError(ScopeError):
    pass


class StepKindOutOfScopeError(ScopeError):
    pass


class TrustExpiredError(ScopeError):
    pass


class CheckpointOutOfScopeError(ScopeError):
    """The bundle guards steps with checkpoints and the signer's scope does not allow it."""


class MemberError(_RejectedBundle):
    """One archive member is wrong; ``member`` names it."""


class UnsafePathError(MemberError):
    pass


class LinkMemberError(MemberError):
    pass


class SpecialMemberError(MemberError):
    pass


class UnexpectedMemberError(MemberError):
    pass


class DuplicateMemberError(MemberError):
    pass


class MissingMemberError(MemberError):
    pass


class MemberSizeError(MemberError):
    pass


class DigestMismatchError(MemberError):
    pass


class LimitExceededError(MemberError):
    pass


class TrustPolicyError(ConfigError):
    """The host owner's trust policy cannot be read or breaks its schema."""


class KeyFileError(ConfigError):
    """A key file cannot be read or written, or its passphrase is wrong. Never names the secret."""


class BundleSourceError(ConfigError):
    """A bundle source directory (bundle.toml and its files) cannot be built."""
