"""``vmbusops fleet serve``: the controller and the agent's HTTP API in one trio process.

Start-up: connect to the broker (the streams and buckets are created if missing), open the
controller's journal (``$VMBUSOPS_HOME/journal/journal.sqlite``: one controller per home, never
beside an agent in the same home), start following the log and governing (see
:mod:`.controller`), then serve the API (Hypercorn, trio worker) exactly as ``vmbusops agent``
does, and print the same ready line: ``{"event": "ready", "listen": [...]}``.

SIGTERM, Ctrl-C or a hangup (:mod:`vmbusops.stop_signals`) stops it: the HTTP server stops, the tasks are cancelled, the journal is closed.
Nothing is lost by stopping: the journal is a projection of the log, and a standby (or this one,
restarted) goes on from the last sequence it applied. The lease is not given up; a standby takes
it once it has not moved for the lease's time to live.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from vmbusops.api.app import build_app
from vmbusops.api.auth import PrincipalStore
from vmbusops.api.broadcast import Broadcaster
from vmbusops.api.connection import install_agent_server
from vmbusops.api.metrics import AgentMetrics
from vmbusops.api.server import GIL_SWITCH_SECONDS, _announce, check_listen
from vmbusops.api.tls import configure_tls
from vmbusops.config import Config
from vmbusops.engine.journal import journal_path
from vmbusops.engine.readers import JournalReaders
from vmbusops.fleet.broker import Broker
from vmbusops.fleet.controller import Controller, ControllerOptions
from vmbusops.fleet.service import FleetService
from vmbusops.fleet.store import FleetJournal
from vmbusops.stop_signals import stop_signals

log = logging.getLogger("vmbusops.fleet")

OpenBroker = Callable[[], AbstractAsyncContextManager[Broker]]


async def run_controller(
    config: Config,
    *,
    open_broker: OpenBroker,
    options: ControllerOptions,
    listen: str | None = None,
    ready_file: Path | None = None,
) -> int:
    agent = config.agent
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    hconfig = HypercornConfig()
    hconfig.bind = [check_listen(listen or agent.listen)]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.graceful_timeout = 2.0
    hconfig.keep_alive_timeout = 75.0
    if agent.tls_cert and agent.tls_key:
        configure_tls(hconfig, cert=agent.tls_cert, key=agent.tls_key, client_ca=agent.client_ca)
    install_agent_server()  # the peer's certificate, and followers' chunks the short way, as the agent's
    broadcaster = Broadcaster()
    metrics = AgentMetrics()
    principals = PrincipalStore()
    journal = FleetJournal(journal_path())
    readers = JournalReaders(journal.path)
    try:
        with trio.open_signal_receiver(*stop_signals()) as signals:
            async with open_broker() as broker, trio.open_nursery() as top:
                controller = Controller(broker, journal, options)
                service = FleetService(
                    controller=controller, reader=journal, readers=readers, principals=principals, config=agent,
                    broadcaster=broadcaster, metrics=metrics,
                )  # fmt: skip
                controller.on_commit = service.on_commit
                controller.on_created = service.job_created
                controller.on_ended = service.job_ended
                service.running.update(j.job_id for j in await trio.to_thread.run_sync(journal.active_jobs))
                stop_server = trio.Event()
                app: Any = build_app(service)
                binds = await top.start(partial(serve, app, hconfig, shutdown_trigger=stop_server.wait))
                # The lease names where this controller answers, for a standby to point clients at.
                controller.lease.url = options.url or binds[0]
                await top.start(controller.run)
                service.ready = True
                log.info("controller ready", extra={"event": "ready", "listen": binds, "id": options.id})
                _announce(binds, ready_file)
                received = await _first(signals)
                log.info("stopping", extra={"event": "stopping", "signal": signal.Signals(received).name})
                service.stopping = True
                stop_server.set()
                top.cancel_scope.cancel()
        log.info("controller stopped", extra={"event": "stopped"})
        return 0
    finally:
        journal.close()
        readers.close()
        principals.close()


async def _first(signals: AsyncIterator[int]) -> int:
    return await signals.__anext__()


__all__ = ["run_controller"]
