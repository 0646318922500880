from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.paths import replay_store_path
from vmbusops.bundle.replay import ReplayStore


@pytest.fixture(scope="session")
def alice() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="session")
def bob() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="session")
def mallory() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def replay(vmbusops_home: Path) -> Iterator[ReplayStore]:
    """The same replay store the command line uses under this test's VMBUSOPS_HOME."""
    with ReplayStore(replay_store_path()) as store:
        yield store
