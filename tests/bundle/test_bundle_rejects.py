"""Every way a bundle must be refused: by `vmbusops bundle verify` (exit 4, a precise message) and
by the in-process accept path (nothing extracted, nothing recorded)."""

from __future__ import annotations

import base64
import gzip
import json
import lzma
import tarfile
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from bundlecraft import (
    Member,
    data_offset,
    make_bundle,
    read_members,
    regular,
    rewrite,
    special,
    trusting,
    write_members,
)
from click.testing import CliRunner

from vmbusops.bundle import errors as E
from vmbusops.bundle.build import sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import StepKind
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import TrustPolicy, save_trust_policy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import accept_bundle
from vmbusops.cli.exitcodes import BUNDLE_REJECTED
from vmbusops.cli.main import cli
from vmbusops.errors import BundleError


@dataclass
class Lab:
    tmp: Path
    good: Path
    alice: PrivateKey
    bob: PrivateKey
    mallory: PrivateKey
    now: datetime
    replay: ReplayStore

    def bad(self, name: str) -> Path:
        return self.tmp / f"{name}.vmb"


@pytest.fixture
def lab(
    tmp_path: Path,
    alice: PrivateKey,
    bob: PrivateKey,
    mallory: PrivateKey,
    now: datetime,
    replay: ReplayStore,
) -> Lab:
    good, _ = make_bundle(tmp_path, "good", [alice], now=now)
    return Lab(tmp_path, good, alice, bob, mallory, now, replay)


def assert_rejected(
    lab: Lab,
    path: Path,
    error: type[BundleError],
    fragment: str,
    *,
    policy: TrustPolicy | None = None,
    now: datetime | None = None,
) -> None:
    policy = policy or trusting(lab.alice)
    recorded_before = lab.replay.count()
    workdir = lab.tmp / "work"
    with pytest.raises(error) as caught:
        accept_bundle(path, policy=policy, replay=lab.replay, workdir=workdir, now=now or lab.now)
    message = str(caught.value)
    assert fragment in message
    assert path.name in message
    assert caught.value.hint
    assert list(workdir.iterdir()) == [], "a rejected bundle left files behind"
    assert lab.replay.count() == recorded_before, "a rejected bundle was recorded"

    if now is None:  # the command line runs on the real clock
        save_trust_policy(policy, trust_policy_path())
        result = CliRunner().invoke(cli, ["bundle", "verify", str(path)])
        assert result.exit_code == BUNDLE_REJECTED, result.output
        assert fragment in result.stderr
        assert path.name in result.stderr
        assert "hint:" in result.stderr


def _flip(path: Path, dst: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


# --- payload bytes ---------------------------------------------------------------------------------


def test_flipped_byte_in_any_payload_file(lab: Lab) -> None:
    members = [m for m in read_members(lab.good) if m.info.name != "envelope.json"]
    assert len(members) >= 6
    for m in members:
        for where in (0, m.info.size // 2, m.info.size - 1):
            bad = _flip(lab.good, lab.bad("flipped"), data_offset(lab.good, m.info.name) + where)
            assert_rejected(
                lab, bad, E.DigestMismatchError, f"member {m.info.name!r} does not match its SHA-256"
            )


def test_changed_manifest_breaks_the_signature(lab: Lab) -> None:
    def widen(members: list[Member]) -> list[Member]:
        env = json.loads(members[0].data or b"")
        manifest = json.loads(base64.b64decode(env["payload"]))
        manifest["targets"]["vms"] = ["web01"]  # even narrowing is a change
        env["payload"] = base64.b64encode(json.dumps(manifest).encode()).decode()
        members[0] = regular("envelope.json", json.dumps(env).encode())
        return members

    bad = rewrite(lab.good, lab.bad("manifest"), widen)
    assert_rejected(lab, bad, E.BadSignatureError, "does not match the manifest")


def test_flipped_byte_in_the_envelope(lab: Lab) -> None:
    env = read_members(lab.good)[0].data or b""
    offset = data_offset(lab.good, "envelope.json") + env.index(b'"payload": "') + 40
    assert_rejected(lab, _flip(lab.good, lab.bad("env"), offset), E.BundleError, "")


# --- members ---------------------------------------------------------------------------------------


def test_added_member(lab: Lab) -> None:
    bad = rewrite(
        lab.good, lab.bad("added"), lambda ms: [*ms, regular("scripts/extra.ps1", b"Stop-Computer")]
    )
    assert_rejected(
        lab, bad, E.UnexpectedMemberError, "'scripts/extra.ps1' is not listed in the signed manifest"
    )


def test_missing_member(lab: Lab) -> None:
    bad = rewrite(
        lab.good, lab.bad("missing"), lambda ms: [m for m in ms if m.info.name != "dsc/localhost.mof"]
    )
    assert_rejected(lab, bad, E.MissingMemberError, "lacks 'dsc/localhost.mof'")


def test_duplicated_member(lab: Lab) -> None:
    def dup(ms: list[Member]) -> list[Member]:
        first = next(m for m in ms if m.info.name == "scripts/report.ps1")
        return [*ms, first]

    bad = rewrite(lab.good, lab.bad("dup"), dup)
    assert_rejected(lab, bad, E.DuplicateMemberError, "'scripts/report.ps1' appears more than once")


def test_duplicate_differing_only_in_case(lab: Lab) -> None:
    bad = rewrite(lab.good, lab.bad("case"), lambda ms: [*ms, regular("Scripts/Report.ps1", b"evil")])
    assert_rejected(lab, bad, E.DuplicateMemberError, "appears more than once")


def test_second_envelope(lab: Lab) -> None:
    bad = rewrite(lab.good, lab.bad("env2"), lambda ms: [*ms, ms[0]])
    assert_rejected(lab, bad, E.DuplicateMemberError, "'envelope.json' appears more than once")


def test_member_larger_than_the_manifest_says(lab: Lab) -> None:
    def grow(ms: list[Member]) -> list[Member]:
        return [
            regular(m.info.name, (m.data or b"") + b"\n") if m.info.name == "files/motd.txt" else m
            for m in ms
        ]

    bad = rewrite(lab.good, lab.bad("grown"), grow)
    assert_rejected(lab, bad, E.MemberSizeError, "larger than the")


@pytest.mark.parametrize(
    "name",
    [
        "../evil.ps1",
        "files/../../evil.ps1",
        "./files/motd.txt",
        "files//motd.txt",
        "C:/Windows/evil.dll",
        "a\\..\\b",
    ],
)
def test_path_traversal(lab: Lab, name: str) -> None:
    bad = rewrite(lab.good, lab.bad("traversal"), lambda ms: [*ms, regular(name, b"x")])
    assert_rejected(lab, bad, E.UnsafePathError, "unsafe path")


@pytest.mark.parametrize("name", ["dsc/modules/Demo/nul.txt", "files/CON.psm1", "files/com1", "files/LPT9.log"])
def test_windows_device_names(lab: Lab, name: str) -> None:
    """A bundle's files reach Windows guests under their own names (a DSC module's do), where
    these open a device."""
    bad = rewrite(lab.good, lab.bad("device"), lambda ms: [*ms, regular(name, b"x")])
    assert_rejected(lab, bad, E.UnsafePathError, "unsafe path (a Windows reserved device name)")


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "/files/motd.txt"])
def test_absolute_path(lab: Lab, name: str) -> None:
    bad = rewrite(lab.good, lab.bad("absolute"), lambda ms: [*ms, regular(name, b"x")])
    assert_rejected(lab, bad, E.UnsafePathError, "unsafe path")


@pytest.mark.parametrize(
    ("kind", "what"), [(tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link")]
)
def test_links(lab: Lab, kind: bytes, what: str) -> None:
    def add_link(ms: list[Member]) -> list[Member]:
        # Replace a listed file by a link with the same name: the classic escape.
        return [
            special(m.info.name, kind, "/etc/shadow") if m.info.name == "files/motd.txt" else m for m in ms
        ]

    bad = rewrite(lab.good, lab.bad("link"), add_link)
    assert_rejected(lab, bad, E.LinkMemberError, f"'files/motd.txt' is {what}")


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.CHRTYPE, "a character device"),
        (tarfile.BLKTYPE, "a block device"),
        (tarfile.FIFOTYPE, "a FIFO"),
        (tarfile.DIRTYPE, "a directory"),
        (tarfile.CONTTYPE, "a contiguous file"),
    ],
)
def test_devices_fifos_and_other_types(lab: Lab, kind: bytes, what: str) -> None:
    bad = rewrite(lab.good, lab.bad("dev"), lambda ms: [*ms, special("files/dev", kind)])
    assert_rejected(lab, bad, E.SpecialMemberError, f"is {what}; bundles hold regular files only")


def test_pax_extended_headers(lab: Lab) -> None:
    members = read_members(lab.good)
    members[1].info.pax_headers = {"path": "../../etc/passwd"}
    bad = write_members(lab.bad("pax"), members, fmt=tarfile.PAX_FORMAT)
    assert_rejected(lab, bad, E.SpecialMemberError, "pax extended header")


def test_gnu_long_names(lab: Lab) -> None:
    members = [*read_members(lab.good), regular("files/" + "x" * 120, b"x")]
    bad = write_members(lab.bad("gnu"), members, fmt=tarfile.GNU_FORMAT)
    assert_rejected(lab, bad, E.SpecialMemberError, "GNU long-name header")


def test_envelope_not_first(lab: Lab) -> None:
    bad = rewrite(lab.good, lab.bad("order"), lambda ms: [*ms[1:], ms[0]])
    assert_rejected(lab, bad, E.EnvelopeMissingError, "the first member must be envelope.json")


def test_data_after_the_end_marker(lab: Lab) -> None:
    bad = lab.bad("trailer")
    bad.write_bytes(lab.good.read_bytes() + b"#!/bin/sh\nrm -rf /\n")
    assert_rejected(lab, bad, E.LimitExceededError, "data follows the archive's end marker")


# --- signers, scopes, thresholds ------------------------------------------------------------------


def test_signed_by_an_untrusted_key(lab: Lab, tmp_path: Path) -> None:
    bad, _ = make_bundle(tmp_path, "mallory", [lab.mallory], now=lab.now)
    assert_rejected(
        lab,
        bad,
        E.UntrustedSignerError,
        f"no signature from a trusted key (signed by: {lab.mallory.keyid[:16]})",
    )


def test_unsigned(lab: Lab, tmp_path: Path) -> None:
    bad, _ = make_bundle(tmp_path, "unsigned", [], now=lab.now)
    assert_rejected(lab, bad, E.UntrustedSignerError, "signed by: nobody")


def test_trusted_key_outside_its_vms(lab: Lab) -> None:
    policy = trusting(lab.alice, vms=("web*",))
    assert_rejected(lab, lab.good, E.TargetOutOfScopeError, "targets db01 are outside the VMs", policy=policy)


def test_target_glob_wider_than_scope(lab: Lab, tmp_path: Path) -> None:
    bad, _ = make_bundle(tmp_path, "glob", [lab.alice], now=lab.now, targets={"vms": ["w*"]})
    assert_rejected(lab, bad, E.TargetOutOfScopeError, "targets w* are outside")


def test_trusted_key_with_another_credential(lab: Lab) -> None:
    policy = trusting(lab.alice, credentials=("helpdesk",))
    assert_rejected(
        lab, lab.good, E.CredentialOutOfScopeError, "credential 'lab-admin' is not one", policy=policy
    )


def test_trusted_key_with_a_forbidden_step_kind(lab: Lab) -> None:
    policy = trusting(lab.alice, steps=frozenset({StepKind.COPY, StepKind.SCRIPT}))
    assert_rejected(
        lab, lab.good, E.StepKindOutOfScopeError, "step kind(s) dsc are not allowed", policy=policy
    )


def test_trust_that_has_ended(lab: Lab) -> None:
    policy = trusting(lab.alice, until=lab.now - timedelta(days=1))
    assert_rejected(lab, lab.good, E.TrustExpiredError, "ended at", policy=policy)


def test_too_few_signers_for_the_threshold(lab: Lab) -> None:
    policy = trusting(lab.alice, lab.bob, threshold=2)
    assert_rejected(lab, lab.good, E.ThresholdNotMetError, "needs at least 2 signers", policy=policy)


def test_two_single_signer_scopes_do_not_add_up(lab: Lab, tmp_path: Path) -> None:
    """alice may sign for web*, bob for db01; a bundle for both needs one scope covering it all."""
    both, _ = make_bundle(tmp_path, "both", [lab.alice, lab.bob], now=lab.now)
    policy = trusting(lab.alice, vms=("web*",))
    policy = policy.with_key(
        trusting(lab.bob, vms=("db01",)).keys[lab.bob.keyid], trusting(lab.bob, vms=("db01",)).scopes[0]
    )
    assert_rejected(lab, both, E.TargetOutOfScopeError, "are outside the VMs", policy=policy)


# --- freshness -----------------------------------------------------------------------------------


def test_expired_bundle(lab: Lab, tmp_path: Path) -> None:
    old, _ = make_bundle(tmp_path, "old", [lab.alice], now=lab.now - timedelta(days=30), expires="7d")
    assert_rejected(lab, old, E.ExpiredBundleError, "expired at")


def test_expiry_allows_small_clock_skew(lab: Lab, tmp_path: Path) -> None:
    path, m = make_bundle(tmp_path, "skew", [lab.alice], now=lab.now)
    accepted = accept_bundle(
        path,
        policy=trusting(lab.alice),
        replay=lab.replay,
        workdir=tmp_path / "w",
        now=m.expires + timedelta(minutes=1),
    )
    assert accepted.manifest.id == m.id
    path2, m2 = make_bundle(tmp_path, "skew2", [lab.alice], now=lab.now)
    assert_rejected(lab, path2, E.ExpiredBundleError, "expired at", now=m2.expires + timedelta(minutes=6))


def test_issued_in_the_future(lab: Lab, tmp_path: Path) -> None:
    future, _ = make_bundle(tmp_path, "future", [lab.alice], now=lab.now + timedelta(hours=1))
    assert_rejected(lab, future, E.NotYetValidError, "in the future")


def test_lower_version(lab: Lab, tmp_path: Path) -> None:
    v2, _ = make_bundle(tmp_path, "v2", [lab.alice], now=lab.now, version=2)
    accept_bundle(v2, policy=trusting(lab.alice), replay=lab.replay, workdir=tmp_path / "ok", now=lab.now)
    v1, _ = make_bundle(tmp_path, "v1", [lab.alice], now=lab.now, version=1)
    assert_rejected(lab, v1, E.VersionRollbackError, "lab-demo v1 is older than v2")


def test_same_bundle_twice(lab: Lab, tmp_path: Path) -> None:
    first = accept_bundle(
        lab.good, policy=trusting(lab.alice), replay=lab.replay, workdir=tmp_path / "ok", now=lab.now
    )
    assert (first.directory / "files" / "motd.txt").is_file()
    # held while its job is being made, then accepted for good
    assert_rejected(lab, lab.good, E.ReplayedBundleError, "is being accepted by process")
    lab.replay.confirm(first.manifest.id)
    assert_rejected(lab, lab.good, E.ReplayedBundleError, "was already accepted on this host")
    # re-signing does not make it new: the id is in the signed manifest
    sign_bundle(lab.good, lab.bob)
    assert_rejected(lab, lab.good, E.ReplayedBundleError, "was already accepted")


# --- not a bundle at all -------------------------------------------------------------------------


def test_truncated(lab: Lab) -> None:
    data = lab.good.read_bytes()
    offset = data_offset(lab.good, "dsc/localhost.mof")
    for cut, fragment in [
        (offset + 100, "ends inside member 'dsc/localhost.mof'"),
        (offset - 512 + 100, "ends inside a tar header"),
        (700, "ends inside"),
    ]:
        bad = lab.bad("truncated")
        bad.write_bytes(data[:cut])
        assert_rejected(lab, bad, E.TruncatedBundleError, fragment)


def test_truncated_before_end_marker(lab: Lab) -> None:
    data = lab.good.read_bytes()
    members = read_members(lab.good)
    last = members[-1]
    end = data_offset(lab.good, last.info.name) + last.info.size + (-last.info.size) % 512
    bad = lab.bad("noend")
    bad.write_bytes(data[:end])
    assert_rejected(lab, bad, E.TruncatedBundleError, "without its end marker")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "too short to be a tar archive"),
        (b"hello, not a tar file\n" * 100, "bad checksum"),
        (b"\x00" * 1024, "the first member must be envelope.json, found no members"),
    ],
)
def test_not_a_tar(lab: Lab, content: bytes, fragment: str) -> None:
    bad = lab.bad("nottar")
    bad.write_bytes(content)
    assert_rejected(lab, bad, E.ArchiveError, fragment)


def test_oversized_envelope(lab: Lab) -> None:
    def pad(ms: list[Member]) -> list[Member]:
        env = (ms[0].data or b"").rstrip() + b" " * (2 << 20) + b"\n"
        return [regular("envelope.json", env), *ms[1:]]

    bad = rewrite(lab.good, lab.bad("bigenv"), pad)
    assert_rejected(lab, bad, E.EnvelopeTooLargeError, "the limit is 1048576")


def _gzip_bomb(path: Path, expanded: int) -> Path:
    """A gzip stream that would expand to ``expanded`` zero bytes, written without holding them."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    with path.open("wb") as f:
        for _ in range(expanded // len(block)):
            f.write(comp.compress(block))
        f.write(comp.flush())
    return path


def test_compression_bomb(lab: Lab) -> None:
    bomb = _gzip_bomb(lab.bad("bomb"), 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    started = time.monotonic()
    assert_rejected(lab, bomb, E.CompressedBundleError, "gzip-compressed")
    assert time.monotonic() - started < 5, "a compressed file must be refused without expanding it"


@pytest.mark.parametrize(
    ("compress", "name"),
    [(gzip.compress, "gzip"), (lzma.compress, "xz"), (lambda b: __import__("bz2").compress(b), "bzip2")],
)
def test_compressed_bundles_are_refused(lab: Lab, compress: object, name: str) -> None:
    bad = lab.bad("compressed")
    bad.write_bytes(compress(lab.good.read_bytes()))  # type: ignore[operator]
    assert_rejected(lab, bad, E.CompressedBundleError, f"{name}-compressed")


def test_sparse_member(lab: Lab) -> None:
    bad = rewrite(lab.good, lab.bad("sparse"), lambda ms: [*ms, special("files/big", tarfile.GNUTYPE_SPARSE)])
    assert_rejected(lab, bad, E.SpecialMemberError, "GNU sparse file")
