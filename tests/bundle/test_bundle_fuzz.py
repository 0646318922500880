"""Property tests: whatever bytes arrive, the envelope and tar readers either accept them or raise
one of our BundleError types; never another exception, never a hang. Bounded to a few seconds."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bundlecraft import make_bundle, trusting
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmbusops.bundle.archive import BLOCK, TarReader, check_member, parse_header
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.dsse import parse_envelope
from vmbusops.bundle.manifest import Manifest, parse_manifest
from vmbusops.bundle.policy import TrustPolicy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import DEFAULT_LIMITS, read_envelope, stream_members, verify_stream
from vmbusops.errors import BundleError

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


class Good:
    data: bytes
    manifest: Manifest
    policy: TrustPolicy
    now: datetime


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    key = PrivateKey.generate()
    now = datetime.now(UTC)
    path, manifest = make_bundle(tmp_path_factory.mktemp("fuzz"), "fuzz", [key], now=now)
    g = Good()
    g.data, g.manifest, g.policy, g.now = path.read_bytes(), manifest, trusting(key), now
    return g


def _whole_pipeline(data: bytes, good: Good) -> None:
    with ReplayStore.in_memory() as replay, contextlib.suppress(BundleError):
        verify_stream(io.BytesIO(data), policy=good.policy, replay=replay, reference_time=good.now)


def _members_only(data: bytes, manifest: Manifest) -> None:
    """The tar reader and member checks alone, past the signature gate."""
    try:
        reader = TarReader(io.BytesIO(data), chunk_size=4096)
        read_envelope(reader, DEFAULT_LIMITS)
        stream_members(reader, manifest, DEFAULT_LIMITS, None)
    except BundleError:
        pass


@FUZZ
@given(st.binary(max_size=4096))
def test_envelope_parser_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(BundleError):
        parse_envelope(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "payloadType": st.sampled_from(["application/vnd.vmbusops.manifest.v1+json", "x"]) | json_values,
            "payload": st.sampled_from(["", "e30=", "e30", "!!"]) | json_values,
            "signatures": st.lists(
                st.fixed_dictionaries(
                    {}, optional={"keyid": st.text(max_size=70) | json_values, "sig": json_values}
                ),
                max_size=3,
            )
            | json_values,
        },
    )
)
def test_envelope_parser_on_json_shapes(doc: dict[str, object]) -> None:
    try:
        envelope = parse_envelope(json.dumps(doc).encode())
        parse_manifest(envelope.payload)
    except BundleError:
        pass


@FUZZ
@given(st.binary(min_size=BLOCK, max_size=BLOCK))
def test_header_parser_on_arbitrary_blocks(block: bytes) -> None:
    try:
        header = parse_header(block)
        if header is not None:
            check_member(header)
    except BundleError:
        pass


@FUZZ
@given(st.binary(max_size=8192))
def test_tar_reader_on_arbitrary_bytes(good: Good, data: bytes) -> None:
    _members_only(data, good.manifest)
    _whole_pipeline(data, good)


@FUZZ
@given(st.data())
def test_mutated_bundles(good: Good, data: st.DataObject) -> None:
    blob = bytearray(good.data)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and blob:
            blob[pos] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=600))
        elif op == "delete":
            del blob[pos : pos + data.draw(st.integers(1, 600))]
    _members_only(bytes(blob), good.manifest)
    _whole_pipeline(bytes(blob), good)


def test_the_unmutated_bundle_passes(good: Good, tmp_path: Path) -> None:
    """The properties above would be vacuous if the good bundle failed too."""
    with ReplayStore.in_memory() as replay:
        verified = verify_stream(
            io.BytesIO(good.data), policy=good.policy, replay=replay, reference_time=good.now
        )
    assert verified.manifest == good.manifest
