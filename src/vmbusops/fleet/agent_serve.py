"""Joining the agent process to a fleet: the broker connection and the :class:`FleetAgent` task.

:func:`fleet_broker` connects before the host is opened, so a broker that cannot be reached stops
``vmbusops agent --fleet`` at once with one line (exit code 3) rather than after start-up; once
connected, the client reconnects by itself for as long as the agent lives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from vmbusops.config import Config
from vmbusops.engine.engine import Engine
from vmbusops.fleet.agent import FleetAgent, FleetAgentOptions
from vmbusops.fleet.agent_config import FleetJoin
from vmbusops.fleet.agent_store import FleetStore, fleet_store_path
from vmbusops.fleet.broker import Broker


@asynccontextmanager
async def fleet_broker(join: FleetJoin | None) -> AsyncIterator[Broker | None]:
    """The broker of ``join`` (None: not in a fleet), connected as this host's NATS user."""
    if join is None:
        yield None
        return
    from vmbusops.fleet.nats_broker import open_broker

    async with open_broker(
        join.url, user=join.user, password=join.password, tls_ca=join.tls_ca, tls_cert=join.tls_cert,
        tls_key=join.tls_key, host=join.host, name=f"vmbusops-agent-{join.host}",
    ) as broker:  # fmt: skip
        yield broker


async def start_fleet(
    nursery: trio.Nursery, broker: Broker, join: FleetJoin, *, engine: Engine, jobs: trio.Nursery, config: Config
) -> FleetAgent:
    """Start the fleet worker in ``nursery``; stop it with :meth:`FleetAgent.stop`."""
    store = FleetStore(fleet_store_path(engine.journal.path))
    options = FleetAgentOptions(
        host=join.host, cluster=join.cluster, heartbeat=join.heartbeat, host_ttl=join.host_ttl,
        max_sessions=engine.options.max_sessions, max_bundle_bytes=config.agent.max_bundle_bytes,
    )  # fmt: skip
    agent = FleetAgent(broker, engine, store, jobs, options)

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await agent.run(task_status=task_status)
        finally:
            store.close()

    await nursery.start(run)
    return agent


__all__ = ["fleet_broker", "start_fleet"]
