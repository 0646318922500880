"""A trust scope may let steps enable the Guest Service Interface; the right survives a save."""

from __future__ import annotations

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, parse_trust_policy


def test_enable_guest_services_round_trips_and_defaults_off() -> None:
    key = PrivateKey.generate().public_key()
    policy = TrustPolicy().with_key(TrustedKey(name="ops", public=key), Scope(keys=(), enable_guest_services=True))
    text = policy.to_toml()
    assert "enable_guest_services = true" in text
    (scope,) = parse_trust_policy(text).scopes
    assert scope.enable_guest_services is True
    plain = TrustPolicy().with_key(TrustedKey(name="ops", public=key), Scope(keys=()))
    assert "enable_guest_services" not in plain.to_toml()
    assert parse_trust_policy(plain.to_toml()).scopes[0].enable_guest_services is False
