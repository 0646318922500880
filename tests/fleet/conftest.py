"""A nats-server of the test's own (JetStream, 127.0.0.1, a free port, its store under tmp_path)
and a broker connected to it as the controller.

``./scripts/test`` installs Debian's nats-server when missing and sets ``VMBUSOPS_NATS=required``:
then a fleet test fails rather than skips without it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from vmbusops.fleet.nats_broker import NatsBroker, open_broker
from vmbusops.fleet.natsserver import NatsServer, find_nats_server, fleet_permissions

CONTROLLER = "controller"
#: Per-user passwords of :func:`fleet_server` (never printed by a passing test).
PASSWORDS = {CONTROLLER: "ctl-secret-7f3a", "HV-A": "hv-a-secret-19c2", "HV-B": "hv-b-secret-5d80"}


def _nats_binary() -> str:
    found = find_nats_server()
    if found is None:
        why = "no nats-server on this machine"
        if os.environ.get("VMBUSOPS_NATS") == "required":
            pytest.fail(f"{why} (./scripts/test should have installed it; see scripts/_bootstrap.sh)")
        pytest.skip(f"{why}: run ./scripts/test, which installs Debian's nats-server")
    return found


@pytest.fixture
def nats_binary() -> str:
    """The nats-server binary, for a test that starts one its own way (the test is skipped
    without one, or fails where ./scripts/test said one is required)."""
    return _nats_binary()


@pytest.fixture
def make_nats_server(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Start a nats-server (keywords go to :class:`NatsServer`); each is stopped after the test."""
    binary = _nats_binary()
    servers: list[NatsServer] = []

    def make(**kwargs: Any) -> NatsServer:
        server = NatsServer(tmp_path / f"nats-{len(servers)}", binary=binary, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def nats_server(make_nats_server: Callable[..., NatsServer]) -> NatsServer:
    """A nats-server with JetStream and no authentication."""
    return make_nats_server()


@pytest.fixture
def fleet_server(make_nats_server: Callable[..., NatsServer]) -> NatsServer:
    """A nats-server with the fleet's users: ``controller`` (everything), ``HV-A`` and ``HV-B``
    (their own subjects only), passwords in :data:`PASSWORDS`."""
    return make_nats_server(
        users=PASSWORDS, permissions=fleet_permissions(CONTROLLER, ["HV-A", "HV-B"])
    )


@pytest.fixture
async def broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    """The controller's broker on :func:`nats_server`, with the fleet's streams and buckets."""
    async with open_broker(nats_server.url, name="test-controller", reconnect_wait=0.1) as b:
        await b.ensure_fleet()
        yield b


def host_broker(server: NatsServer, host: str, passwords: Mapping[str, str] = PASSWORDS) -> Any:
    """``async with host_broker(server, "HV-A") as b``: connected as that host's user."""
    return open_broker(
        server.url, user=host, password=passwords[host], host=host, name=f"test-{host}", reconnect_wait=0.1
    )
