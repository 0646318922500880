"""Joining the agent process to a fleet: the broker connection and the :class:`FleetAgent` task.

:func:`fleet_broker` connects before the host is opened, so a broker that cannot be reached stops
``vmbusops agent --fleet`` at once with one line (exit code 3) rather than after start-up; once
connected, the client reconnects by itself for as long as the agent lives. A URL that names no
server gets an answer within :data:`CONNECT_SECONDS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from vmbusops.config import Config
from vmbusops.engine.engine import Engine
from vmbusops.errors import ConfigError
from vmbusops.fleet.agent import FleetAgent, FleetAgentOptions
from vmbusops.fleet.agent_config import FleetJoin
from vmbusops.fleet.agent_store import FleetStore, fleet_store_path
from vmbusops.fleet.broker import Broker, BrokerDenied, BrokerError
from vmbusops.fleet.names import HOSTS_BUCKET

#: How long the agent tries to reach its broker at start before it gives up (exit code 3).
CONNECT_SECONDS = 10.0


@asynccontextmanager
async def fleet_broker(join: FleetJoin | None) -> AsyncIterator[Broker | None]:
    """The broker of ``join`` (None: not in a fleet), connected as this host's NATS user."""
    if join is None:
        yield None
        return
    from vmbusops.fleet.nats_broker import open_broker

    async with AsyncExitStack() as stack:
        # Bounded here whatever the client does about a first connection that fails (it may
        # keep trying): an agent that cannot reach its broker at start says so and stops.
        with trio.move_on_after(CONNECT_SECONDS) as waited:
            broker = await stack.enter_async_context(open_broker(
                join.url, user=join.user, password=join.password, tls_ca=join.tls_ca, tls_cert=join.tls_cert,
                tls_key=join.tls_key, host=join.host, name=f"vmbusops-agent-{join.host}",
            ))  # fmt: skip
        if waited.cancelled_caught:
            raise BrokerError(
                f"cannot reach the fleet's broker at {join.url} within {CONNECT_SECONDS:g} s",
                hint="check the URL and that nats-server runs there (and TLS, user and password, if it asks for them)",
            )
        await _may_serve(broker, join)
        yield broker


async def _may_serve(broker: Broker, join: FleetJoin) -> None:
    """Refuse to start as a host whose subjects this NATS user may not use (it would say ready,
    then fail every heartbeat); any other answer, even an error, is left to the heartbeats."""
    try:
        with trio.move_on_after(CONNECT_SECONDS):
            await broker.kv_get(HOSTS_BUCKET, join.host)
    except BrokerDenied as exc:
        who = f"the NATS user {join.user}" if join.user else "this connection's NATS user"
        raise ConfigError(
            f"{who} may not use fleet host {join.host}'s subjects ({exc.message})",
            hint="each host joins as its own NATS user: give --fleet-user this host's user, or --fleet-host the host "
            "this user is for",
        ) from None
    except BrokerError:
        pass


async def start_fleet(
    nursery: trio.Nursery, broker: Broker, join: FleetJoin, *, engine: Engine, jobs: trio.Nursery, config: Config
) -> FleetAgent:
    """Start the fleet worker in ``nursery``; stop it with :meth:`FleetAgent.stop`."""
    store = FleetStore(fleet_store_path(engine.journal.path))
    options = FleetAgentOptions(
        host=join.host, cluster=join.cluster, heartbeat=join.heartbeat, host_ttl=join.host_ttl, list_every=join.list_every,
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
