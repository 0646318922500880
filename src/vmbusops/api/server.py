"""``vmbusops agent``: the engine, the scheduler and the API in one trio process.

Start-up: host connection, engine (which reconciles what a previous agent left interrupted),
scheduler, retention (:mod:`vmbusops.retention`, a pass now and every ``interval_minutes``), then
Hypercorn (trio worker) on the configured address. The host connection is held by a
:class:`~vmbusops.guestops.supervisor.HostSupervisor`: if the host process (or SSH / WinRM session)
dies later, the runs on it fail, the agent reopens it with backoff, and meanwhile ``/v1/health``
says ``host-down`` and submissions get a retryable 503. Once it listens, the agent is
*ready*: ``/v1/health`` says so, a JSON line ``{"event": "ready", "listen": [...]}`` goes to
stdout, the ready file (if asked for) is written, and systemd is notified (``Type=notify``).

Shutdown (SIGTERM, Ctrl-C, or a hangup not ignored: :mod:`vmbusops.stop_signals`): new
submissions and schedule ticks are refused at once; running jobs get ``shutdown_grace_seconds``
to finish; then the rest are cancelled (each guest pipeline gets the PSRP stop signal and the
journal writes that follow are shielded), the HTTP server stops, and the engine flushes the
journal before the process exits. A second signal skips the grace period. Runs stopped this way
read as interrupted and resume with ``vmbusops jobs resume`` (or through the next agent's API:
``POST /v1/jobs/{id}/resume``).

With ``--fleet`` the agent also joins a fleet (:mod:`vmbusops.fleet.agent`): the broker is reached
before the host is opened, and the fleet worker heartbeats, takes this host's work and forwards
its runs' commits beside the API. On shutdown it takes no more work, its runs get the same grace,
and what is queued for the broker is published before the process exits (fleet runs are not
resumed here: the fleet's controller dispatches them again).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
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
from vmbusops.api.service import AgentService
from vmbusops.api.tls import configure_tls
from vmbusops.config import Config
from vmbusops.credentials import GuestCredential
from vmbusops.engine import EngineOptions, Journal, open_engine
from vmbusops.engine.journal_retention import journal_bytes
from vmbusops.engine.readers import JournalReaders
from vmbusops.errors import ConfigError
from vmbusops.fleet.agent_config import FleetJoin
from vmbusops.fleet.agent_serve import fleet_broker, start_fleet
from vmbusops.fleet.broker import Broker
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.supervisor import Backoff, HostSupervisor, supervise_host
from vmbusops.heap import collect_at_rest
from vmbusops.receipts import receipt_hook
from vmbusops.retention import keep_retention
from vmbusops.stop_signals import stop_signals

#: How long a thread may hold the interpreter while another waits (Python's default is 5 ms).
GIL_SWITCH_SECONDS = 0.0005

log = logging.getLogger("vmbusops.agent")


def _notify_systemd(state: str) -> None:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not hasattr(socket, "AF_UNIX"):
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            log.warning("cannot notify systemd", extra={"event": "notify-failed"})


def check_ready_file(ready_file: Path | None) -> None:
    """Refuse a ``--ready-file`` that could not be written, before anything starts."""
    if ready_file is not None and not ready_file.parent.is_dir():
        raise ConfigError(
            f"--ready-file {str(ready_file)!r}: its directory {str(ready_file.parent)!r} does not exist",
            hint="give a file in a directory that exists and this user may write",
        )


def _announce(binds: list[str], ready_file: Path | None) -> None:
    sys.stdout.write(json.dumps({"event": "ready", "listen": binds}) + "\n")
    sys.stdout.flush()
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"listen": binds, "pid": os.getpid()}) + "\n", encoding="utf-8")
            tmp.replace(ready_file)
        except OSError as exc:
            raise ConfigError(
                f"--ready-file {str(ready_file)!r}: cannot write it: {exc.strerror or exc}",
                hint="give a file in a directory that exists and this user may write",
            ) from exc
    _notify_systemd("READY=1")


async def _hold_jobs_nursery(
    scope: trio.CancelScope, done: trio.Event, *, task_status: trio.TaskStatus[trio.Nursery]
) -> None:
    try:
        with scope:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()
    finally:
        done.set()


def check_listen(bind: str) -> str:
    """``bind`` if the agent can listen there; else the one-line usage error saying why (a bad
    HOST:PORT, a name that does not resolve, an address in use or not ours), before anything
    starts, rather than the server's traceback once the host is open."""
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"cannot listen on {bind!r}: not HOST:PORT", hint="for example --listen 127.0.0.1:8421")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {bind}: {exc.strerror or exc}",
            hint="pass --listen HOST:PORT with an address of this machine and a free port",
        ) from None
    return bind


async def run_agent(
    config: Config,
    *,
    credential_for: Callable[[str], GuestCredential],
    host: str | None = None,
    listen: str | None = None,
    ready_file: Path | None = None,
    options: EngineOptions | None = None,
    scheduler_factory: Callable[[AgentService], Any] | None = None,
    fleet: FleetJoin | None = None,
) -> int:
    agent = config.agent
    # The journal writer's commits and some reads run in worker threads beside the event loop; a
    # short switch interval lets the loop have the interpreter back soon after each system call.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    collect_at_rest()  # the collector's pauses come when the loop would rest, not in a request
    hconfig = HypercornConfig()
    hconfig.bind = [check_listen(listen or agent.listen)]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")  # through our JSON handler
    hconfig.graceful_timeout = 2.0
    hconfig.keep_alive_timeout = 75.0
    if agent.tls_cert and agent.tls_key:
        configure_tls(hconfig, cert=agent.tls_cert, key=agent.tls_key, client_ca=agent.client_ca)
    install_agent_server()

    broadcaster = Broadcaster()
    metrics = AgentMetrics()
    principals = PrincipalStore()
    journal = Journal(max_mb=config.retention.journal_max_mb)
    reader = Journal()
    readers = JournalReaders(journal.path)
    try:
        # A fleet's broker is reached first: one that cannot be stops the agent before anything starts.
        async with fleet_broker(fleet) as broker:
            with trio.open_signal_receiver(*stop_signals()) as signals:
                supervisor = HostSupervisor(
                    host or config.host,
                    partial(open_host, host, config=config),
                    backoff=Backoff(cap=agent.host_reconnect_max_seconds),
                    wrap=lambda opened: opened.cache_listing(ttl=2.0),
                    on_change=metrics.host_changed,
                )
                async with supervise_host(supervisor) as hv:
                    await _serve(
                        hv=hv, journal=journal, reader=reader, readers=readers, principals=principals, broadcaster=broadcaster,
                        metrics=metrics, signals=signals, config=config,
                        credential_for=credential_for, host=host, hconfig=hconfig, ready_file=ready_file,
                        options=options, scheduler_factory=scheduler_factory, fleet=(broker, fleet),
                    )  # fmt: skip
        log.info("agent stopped", extra={"event": "stopped"})
        return 0
    finally:
        journal.close()
        reader.close()
        readers.close()
        principals.close()


async def _serve(
    *,
    hv: HostSupervisor,
    journal: Journal,
    reader: Journal,
    readers: JournalReaders,
    principals: PrincipalStore,
    broadcaster: Broadcaster,
    metrics: AgentMetrics,
    signals: Any,
    config: Config,
    credential_for: Callable[[str], GuestCredential],
    host: str | None,
    hconfig: HypercornConfig,
    ready_file: Path | None,
    options: EngineOptions | None,
    scheduler_factory: Callable[[AgentService], Any] | None,
    fleet: tuple[Broker | None, FleetJoin | None] = (None, None),
) -> None:
    agent = config.agent
    options = options or EngineOptions(max_sessions=config.max_sessions)
    async with (
        open_engine(
            hv,
            journal,
            credential_for=credential_for,
            host_name=host or config.host,
            options=options,
        ) as engine,
        trio.open_nursery() as top,
    ):
        jobs_scope = trio.CancelScope()
        jobs_done = trio.Event()
        jobs = await top.start(_hold_jobs_nursery, jobs_scope, jobs_done)
        service = AgentService(
            engine=engine, hosts=hv, reader=reader, jobs=jobs, principals=principals, config=agent,
            broadcaster=broadcaster, metrics=metrics, readers=readers,
        )  # fmt: skip
        engine.writer.on_commit = service.on_commit
        engine.after_run = receipt_hook(journal)  # each finished run's signed receipt
        engine.writer.followed = lambda: broadcaster.followers > 0
        engine.writer.on_tick = broadcaster.pacer.tick  # followers send after the writer's commits
        metrics.journal_bytes.set_function(lambda: journal_bytes(journal.path))
        retention_scope = trio.CancelScope()
        top.start_soon(partial(keep_retention, config.retention, retention_scope, journal_path=journal.path))
        scheduler_scope = trio.CancelScope()
        if scheduler_factory is not None:
            scheduler = scheduler_factory(service)

            async def run_scheduler() -> None:
                with scheduler_scope:
                    await scheduler.run()

            await scheduler.load()
            top.start_soon(run_scheduler)
        stop_server = trio.Event()
        app: Any = build_app(service)
        broker, join = fleet
        worker = None
        if broker is not None and join is not None:
            worker = await start_fleet(top, broker, join, engine=engine, jobs=jobs, config=config)
        binds = await top.start(partial(serve, app, hconfig, shutdown_trigger=stop_server.wait))
        service.ready = True
        log.info("agent ready", extra={
            "event": "ready", "listen": binds, "host": host or config.host, "max_sessions": options.max_sessions,
        })  # fmt: skip
        _announce(binds, ready_file)

        received = await signals.__anext__()
        log.info("stopping", extra={"event": "stopping", "signal": signal.Signals(received).name,
                                    "jobs_running": len(service.running)})  # fmt: skip
        _notify_systemd("STOPPING=1")
        service.stopping = True
        if worker is not None:
            worker.stopping = True  # takes no more fleet work; what it runs gets the grace below
        scheduler_scope.cancel()
        retention_scope.cancel()
        with trio.move_on_after(agent.shutdown_grace_seconds):
            async with trio.open_nursery() as grace:

                async def second_signal() -> None:
                    await signals.__anext__()
                    log.info("second signal: stopping runs now", extra={"event": "stopping-now"})
                    grace.cancel_scope.cancel()

                async def idle() -> None:
                    await service.wait_idle()
                    if worker is not None:
                        await worker.wait_idle()
                    grace.cancel_scope.cancel()

                grace.start_soon(second_signal)
                grace.start_soon(idle)
        if service.running:
            log.info("interrupting runs", extra={"event": "interrupting", "jobs": sorted(service.running)})
        jobs_scope.cancel()
        await jobs_done.wait()
        if worker is not None:
            await worker.stop(drain=agent.shutdown_grace_seconds)
        stop_server.set()
