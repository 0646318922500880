"""A nats-server of our own for tests and demos, and the per-host permissions a fleet needs.

:class:`NatsServer` writes a configuration file (listen on 127.0.0.1 on a free port, JetStream
with its own store directory, optional users with permissions, optional TLS), starts
``nats-server -c`` and waits until it says it is ready. It can be stopped, killed (SIGKILL) and
restarted on the same store and port, which is how the tests check that the controller's reading of
the log and an agent's work survive a broker restart.

:func:`fleet_permissions` is the authorization a production server should have too (``vmbusops
fleet nats-config`` prints it): the controller's user may do anything, and each host's user may
publish only its own facts, take only its own work, read and write only its own host entry and the
placement bucket, and read bundles. Nothing lets a host create or delete a stream or a consumer,
touch another host's work or speak for another host in the log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbusops.fleet import names

#: The JetStream API prefix (one account, no domain).
JS_API = "$JS.API"

def host_inbox_prefix(host: str) -> str:
    """Where a host connection's replies arrive (``open_broker(host=...)`` uses this inbox
    prefix), so that no host can subscribe to the replies meant for another."""
    return "_INBOX." + names.check_host_name(host)


def find_nats_server() -> str | None:
    """The nats-server binary: on PATH, else Debian's /usr/sbin/nats-server; None if neither."""
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


def host_permissions(host: str) -> dict[str, Any]:
    """What ``host``'s user may publish and subscribe to: its own facts and work, nothing more."""
    names.check_host_name(host)
    work, log = names.WORK_STREAM, names.LOG_STREAM
    consumer = names.work_consumer(host)
    hosts_kv, placement_kv = names.HOSTS_BUCKET, names.PLACEMENT_BUCKET
    bundles = f"OBJ_{names.BUNDLES_STORE}"
    publish = [
        # its own facts in the log (the publish is a request: the stream answers on the inbox)
        names.host_log_subject(host),
        # its own work: pull, ack/nak/term, and look at its consumer
        f"{JS_API}.CONSUMER.MSG.NEXT.{work}.{consumer}",
        f"{JS_API}.CONSUMER.INFO.{work}.{consumer}",
        f"$JS.ACK.{work}.{consumer}.>",
        # its own host entry, and the placement bucket (CAS writes), read by direct get
        f"$KV.{hosts_kv}.{host}",
        f"{JS_API}.DIRECT.GET.KV_{hosts_kv}.$KV.{hosts_kv}.{host}",
        f"$KV.{placement_kv}.>",
        f"{JS_API}.DIRECT.GET.KV_{placement_kv}.$KV.{placement_kv}.>",
        # bundles, read only: the object's metadata and its chunks, by direct get
        f"{JS_API}.DIRECT.GET.{bundles}",
        f"{JS_API}.DIRECT.GET.{bundles}.>",
    ]
    # The log stream's name is in no subject a host publishes: it may not read the log.
    assert all(log not in p for p in publish)
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [host_inbox_prefix(host) + ".>"]},
    }


def fleet_permissions(controller_user: str, hosts: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Per user, its permissions (None: everything): the controller's user, then each host's."""
    out: dict[str, dict[str, Any] | None] = {controller_user: None}
    for host in hosts:
        if host == controller_user:
            raise ValueError(f"the host {host!r} has the controller user's name")
        out[host] = host_permissions(host)
    return out


class EnvRef(str):
    """A value the server takes from its environment when it reads the configuration
    (``$NAME``, written unquoted): how a printed configuration carries no password."""


def render_conf(value: Any, indent: int = 0) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans, :class:`EnvRef`) in nats-server's
    configuration syntax."""
    pad = "  " * indent
    if isinstance(value, EnvRef):
        return "$" + str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        lines = [
            f"{pad}  {json.dumps(str(k))}: {render_conf(v, indent + 1)}" for k, v in value.items()
        ]
        return "{\n" + "\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)):
        items = [render_conf(v, indent + 1) for v in value]
        if sum(len(i) + 2 for i in items) < 60 and not any("\n" in i for i in items):
            return "[" + ", ".join(items) + "]"
        return "[\n" + "\n".join(f"{pad}  {i}" for i in items) + f"\n{pad}]"
    raise TypeError(f"cannot write {type(value).__name__} in a nats-server configuration")


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key, and optionally a CA to verify client certificates."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify_clients: bool = False


def server_config(
    *,
    listen: str,
    store_dir: Path | str,
    users: Mapping[str, str] | None = None,
    permissions: Mapping[str, dict[str, Any] | None] | None = None,
    tls: TlsFiles | None = None,
    server_name: str = "vmbusops",
    account: str = "FLEET",
) -> dict[str, Any]:
    """A nats-server configuration: JetStream, and with ``users`` (name -> password, or an
    :class:`EnvRef`) one account holding them, each with its ``permissions`` if given."""
    conf: dict[str, Any] = {
        "server_name": server_name,
        "listen": listen,
        "jetstream": {"store_dir": str(store_dir)},
    }
    if users:
        perms = permissions or {}
        entries: list[dict[str, Any]] = []
        for user, password in users.items():
            entry: dict[str, Any] = {"user": user, "password": password}
            if perms.get(user) is not None:
                entry["permissions"] = perms[user]
            entries.append(entry)
        conf["accounts"] = {account: {"jetstream": "enabled", "users": entries}}
    if tls is not None:
        block: dict[str, Any] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
        if tls.ca is not None:
            block["ca_file"] = str(tls.ca)
        if tls.verify_clients:
            block["verify"] = True
        conf["tls"] = block
    return conf


class NatsServerError(RuntimeError):
    """The nats-server could not be started, or died."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One nats-server process on 127.0.0.1, its files under ``directory``.

    Blocking methods (start, stop, kill, restart): from trio, call them through
    ``trio.to_thread.run_sync``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        permissions: Mapping[str, dict[str, Any] | None] | None = None,
        tls: TlsFiles | None = None,
        binary: str | None = None,
        port: int | None = None,
        ready_timeout: float = 20.0,
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``config_text``: a configuration of the caller's (listening on 127.0.0.1:``port``)
        instead of the one made of ``users``, ``permissions`` and ``tls``; ``env``: variables
        added to the server's environment (what ``$NAME`` in a configuration reads)."""
        found = binary or find_nats_server()
        if found is None:
            raise NatsServerError("nats-server is not installed (Debian package nats-server)")
        self.binary = found
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store_dir = self.directory / "store"
        self.config_path = self.directory / "nats-server.conf"
        self.log_path = self.directory / "nats-server.log"
        self.port = port or _free_port()
        self.users = dict(users or {})
        self.tls = tls
        self.ready_timeout = ready_timeout
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        if config_text is not None:
            self.config_path.write_text(config_text, encoding="utf-8")
            os.chmod(self.config_path, 0o600)
            return
        conf = server_config(
            listen=f"127.0.0.1:{self.port}",
            store_dir=self.store_dir,
            users=self.users,
            permissions=permissions,
            tls=tls,
        )
        self.config_path.write_text(render_conf(conf) + "\n", encoding="utf-8")
        os.chmod(self.config_path, 0o600)

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        if self.running:
            return
        start_at = len(self.log_text())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env,
            )
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if "Server is ready" in self.log_text()[start_at:] and self._accepts():
                return
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = self.log_text()[start_at:].strip().splitlines()[-3:]
                raise NatsServerError(
                    f"nats-server exited with {code} at start: {' | '.join(tail) or 'no output'}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise NatsServerError(f"nats-server was not ready within {self.ready_timeout} s")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM), SIGKILL if it has not exited within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does to it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGKILL if ``hard``) and start again on the same store and port."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
