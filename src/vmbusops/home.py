"""Where vmbusops keeps its state: one directory, ``VMBUSOPS_HOME``.

Configuration, the credential store, the simulator's state, the journal and the trust policy
all live below it, so that users and tests can run isolated instances side by side by pointing
``VMBUSOPS_HOME`` somewhere else. Without it, the platform's usual per-user data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_HOME = "VMBUSOPS_HOME"


def home_dir(*, create: bool = True) -> Path:
    """The state directory; created (owner-only) on first use."""
    raw = os.environ.get(ENV_HOME)
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("vmbusops", appauthor=False))
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def home_path(*parts: str, create_parent: bool = True) -> Path:
    """A path below the state directory, its parent created."""
    path = home_dir().joinpath(*parts)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
