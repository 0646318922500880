"""Where bundle state lives under ``$VMBUSOPS_HOME``."""

from __future__ import annotations

from pathlib import Path

from vmbusops.home import home_path


def trust_policy_path() -> Path:
    return home_path("trust.toml")


def keys_dir() -> Path:
    return home_path("keys", "x").parent


def replay_store_path() -> Path:
    return home_path("bundles", "accepted.sqlite")


def accepted_bundles_dir() -> Path:
    """Where :func:`accept_bundle` extracts bundles (one fresh owner-only folder each)."""
    return home_path("bundles", "accepted", "x").parent
