"""PSRP over SSH: the host's ``powershell`` subsystem, through asyncssh.

Theory of operation
-------------------
A Windows host with OpenSSH runs ``pwsh -sshs`` as the ``powershell`` subsystem; that process
speaks exactly the OutOfProc framing a local ``powershell.exe -ServerMode`` speaks on its
stdin/stdout, so the runspace pool and everything above it is unchanged: only the byte stream
differs. :class:`SshConnection` owns one authenticated SSH connection (on a private asyncio loop
in its own thread, see :mod:`.ssh_bridge`); :meth:`SshConnection.open_subsystem` opens a channel
on it and returns a :class:`SshChannelTransport`, which satisfies :class:`~.transport.Transport`.
The same connection carries SFTP for staging files (:mod:`vmbusops.guestops.staging`).

Trust: the server's host key must match ``known_hosts`` (the user's by default) or a key pinned
in the configuration; an unknown or changed key is refused with :class:`HostKeyError`, whose
hint says how to trust it after checking its fingerprint. Authentication is by key files and/or
the SSH agent; no password ever passes through here.

Failures map to our hierarchy at this boundary: a lost connection or a subsystem that exits is a
transient :class:`HostProcessExitedError` (the engine retries), a refused key or login is not.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import asyncssh
import trio

from vmbusops.errors import (
    ConfigError,
    HostAuthError,
    HostKeyError,
    HostProcessExitedError,
    TransportError,
)
from vmbusops.psrp.ssh_bridge import AsyncioThread, LoopClosedError

DEFAULT_SUBSYSTEM = "powershell"
_RECEIVE_SIZE = 256 * 1024
_STDERR_KEEP = 4096
# Bigger than asyncssh's default (2 MiB) so one round trip keeps a loopback or LAN link busy.
_WINDOW = 8 * 1024 * 1024
_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
)


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where and how to reach one host over SSH."""

    host: str
    port: int = 22
    username: str | None = None
    known_hosts: str | None = None
    """A known_hosts file; ``None`` means the user's (``~/.ssh/known_hosts``)."""
    host_key: str | None = None
    """A pinned public key (``ssh-ed25519 AAAA...``); when set, it alone is trusted."""
    client_keys: tuple[str, ...] = ()
    """Private key files; empty means the user's default keys (``~/.ssh/id_*``)."""
    use_agent: bool = True
    subsystem: str = DEFAULT_SUBSYSTEM
    connect_timeout: float = 30.0

    @property
    def url(self) -> str:
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}:{self.port}"


def parse_ssh_url(url: str) -> SshTarget:
    """``ssh://[user@]host[:port]`` to a target with default trust and authentication."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise ConfigError(f"not an SSH host address: {url!r}", hint="write it as ssh://user@host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise ConfigError(
            f"an SSH host address has only a user, a host and a port: {url!r}",
            hint="passwords are not accepted here; use a key or the SSH agent",
        )
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise ConfigError(f"bad port in {url!r}") from exc
    return SshTarget(host=parts.hostname, port=port, username=unquote(parts.username) if parts.username else None)


def _trusted_keys(target: SshTarget) -> Any:
    """What asyncssh's ``known_hosts`` option gets: a pinned key, or a known_hosts file."""
    if target.host_key:
        try:
            key = asyncssh.import_public_key(target.host_key)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(f"the pinned host key for {target.url} is not a public key: {exc}") from exc
        return ([key], [], [])
    path = target.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
    if not os.path.exists(path):
        # asyncssh treats a missing file as "trust nothing"; say so plainly instead.
        return ([], [], [])
    return path


def _known_hosts_path(target: SshTarget) -> str:
    return target.known_hosts or os.path.expanduser("~/.ssh/known_hosts")


def _has_recorded_key(target: SshTarget) -> bool:
    if target.host_key:
        return True
    path = _known_hosts_path(target)
    if not os.path.exists(path):
        return False
    try:
        known = asyncssh.read_known_hosts(path)
    except (OSError, ValueError):
        return False
    host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    trusted, *_ = known.match(host, "", target.port)
    return bool(trusted)


async def _presented_key(target: SshTarget) -> asyncssh.SSHKey | None:
    """The key the server presents (asked for again, bounded), to quote its fingerprint."""
    try:
        return await asyncio.wait_for(asyncssh.get_server_host_key(target.host, target.port), 5)
    except (OSError, asyncssh.Error, TimeoutError):
        return None


class SshConnection:
    """One authenticated SSH connection to a host, on its own asyncio loop thread."""

    def __init__(self, target: SshTarget, bridge: AsyncioThread, conn: asyncssh.SSHClientConnection) -> None:
        self.target = target
        self.bridge = bridge
        self._conn = conn
        self._lost: str | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, target: SshTarget) -> AsyncIterator[SshConnection]:
        bridge = AsyncioThread(f"ssh {target.host}:{target.port}")
        await bridge.start()
        try:
            conn = await bridge.run(_connect(target))
            self = cls(target, bridge, conn)
            try:
                yield self
            finally:
                with trio.CancelScope(shield=True):
                    await self._close()
        finally:
            with trio.CancelScope(shield=True):
                await bridge.aclose()

    async def _close(self) -> None:
        async def close() -> None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 5)
            except TimeoutError:
                pass

        try:
            await self.bridge.run(close())
        except LoopClosedError:
            pass

    @property
    def connection(self) -> asyncssh.SSHClientConnection:
        """The asyncssh connection; use it only through :attr:`bridge`."""
        return self._conn

    def describe(self) -> str:
        return self.target.url

    async def open_subsystem(self, name: str | None = None) -> SshChannelTransport:
        """Open a channel to the host's PowerShell subsystem (``pwsh -sshs``)."""
        subsystem = name or self.target.subsystem
        try:
            writer, reader, stderr = await self.bridge.run(
                self._conn.open_session(subsystem=subsystem, encoding=None, window=_WINDOW)
            )
        except asyncssh.ChannelOpenError as exc:
            raise TransportError(
                f"{self.target.url} refused to open the {subsystem!r} subsystem: {exc.reason}",
                hint="on the host, add to sshd_config: Subsystem powershell c:/progra~1/powershell/7/pwsh.exe "
                "-sshs -NoLogo -NoProfile (see host_agent/README.md), then restart sshd",
            ) from exc
        except (asyncssh.Error, OSError, LoopClosedError) as exc:
            raise HostProcessExitedError(f"the SSH connection to {self.target.url} was lost: {exc}") from exc
        transport = SshChannelTransport(self, subsystem, writer, reader)
        await self.bridge.run(transport._start_stderr_drain(stderr))
        return transport


async def _connect(target: SshTarget) -> asyncssh.SSHClientConnection:
    """Runs on the asyncio loop: connect and authenticate, mapping failures to our errors."""
    options: dict[str, Any] = {
        "port": target.port,
        "known_hosts": _trusted_keys(target),
        "connect_timeout": target.connect_timeout,
        "login_timeout": target.connect_timeout,
        "keepalive_interval": 15,
        "keepalive_count_max": 4,
        "agent_path": () if target.use_agent else None,
        "client_keys": list(target.client_keys) if target.client_keys else (),
        "ignore_encrypted": True,
        # AES-GCM first: AES-NI through OpenSSL does it in one call per packet, while
        # chacha20-poly1305 (asyncssh's first choice) costs two, which halves bulk staging.
        "encryption_algs": _CIPHERS,
        "compression_algs": ["none"],
        "password_auth": False,
        "kbdint_auth": False,
        # ~/.ssh/config may not name a host the way the inventory does; the inventory decides.
        "config": None,
    }
    if target.username:
        options["username"] = target.username
    try:
        return await asyncssh.connect(target.host, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise await _host_key_error(target) from exc
    except asyncssh.PermissionDenied:
        how = "the key(s) " + ", ".join(os.path.basename(k) for k in target.client_keys) if target.client_keys else "the default keys"
        if target.use_agent:
            how += " and the SSH agent"
        raise HostAuthError(
            f"{target.url} refused the login as {target.username or 'the current user'} (tried {how})",
            hint="add the public key to the user's authorized_keys on the host (administrators: "
            "C:\\ProgramData\\ssh\\administrators_authorized_keys), or load the key into ssh-agent",
        ) from None
    except asyncssh.DisconnectError as exc:
        raise TransportError(f"{target.url} closed the SSH connection: {exc.reason}") from exc
    except (OSError, TimeoutError) as exc:
        raise TransportError(
            f"cannot reach {target.url}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc or 'timed out'}"
        ) from exc
    except asyncssh.Error as exc:
        raise TransportError(f"SSH to {target.url} failed: {exc}") from exc


async def _host_key_error(target: SshTarget) -> HostKeyError:
    key = await _presented_key(target)
    fingerprint = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}" if key is not None else "unknown"
    where = "the pinned host_key" if target.host_key else _known_hosts_path(target)
    host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    if _has_recorded_key(target):
        return HostKeyError(
            f"the host key of {target.url} has CHANGED: it presents {fingerprint}, which does not match "
            f"{where}. This may be an attack (someone in the middle) or a reinstalled host.",
            hint="ask the host's administrator for its key fingerprint (on the host: "
            "ssh-keygen -lf C:\\ProgramData\\ssh\\ssh_host_ed25519_key.pub); only if it matches, "
            f"remove the old entry (ssh-keygen -R '{host}' -f {where}) and trust the new one",
        )
    keyscan = f"ssh-keyscan -p {target.port} {target.host}" if target.port != 22 else f"ssh-keyscan {target.host}"
    return HostKeyError(
        f"the host key of {target.url} is not trusted: it presents {fingerprint} and {where} has no key for it",
        hint=f"compare the fingerprint with the host's (ssh-keygen -lf <host key>.pub on the host); if it "
        f"matches, trust it with: {keyscan} >> {_known_hosts_path(target)} "
        f"(or pin it: host_key = \"<the key line>\" in the host's [hosts.NAME] entry)",
    )


class SshChannelTransport:
    """One SSH channel to a PowerShell subsystem, as a :class:`~.transport.Transport`."""

    def __init__(
        self,
        connection: SshConnection,
        subsystem: str,
        writer: asyncssh.SSHWriter[bytes],
        reader: asyncssh.SSHReader[bytes],
    ) -> None:
        self._connection = connection
        self._bridge = connection.bridge
        self._subsystem = subsystem
        self._writer = writer
        self._reader = reader
        self._channel = cast("asyncssh.SSHClientChannel[bytes]", writer.channel)
        self._send_lock = trio.Lock()
        self._stderr_tail: deque[bytes] = deque()
        self._stderr_size = 0
        self._stderr_task: asyncio.Task[None] | None = None
        self._error: str | None = None

    async def _start_stderr_drain(self, stderr: asyncssh.SSHReader[bytes]) -> None:
        async def drain() -> None:
            try:
                while chunk := await stderr.read(4096):
                    self._stderr_tail.append(chunk)
                    self._stderr_size += len(chunk)
                    while self._stderr_size > _STDERR_KEEP and len(self._stderr_tail) > 1:
                        self._stderr_size -= len(self._stderr_tail.popleft())
            except (asyncssh.Error, OSError):
                return

        self._stderr_task = asyncio.get_running_loop().create_task(drain())

    def describe(self) -> str:
        return f"{self._connection.target.url} ({self._subsystem} subsystem)"

    async def send_all(self, data: bytes) -> None:
        async def write() -> None:
            self._writer.write(data)
            await self._writer.drain()

        async with self._send_lock:
            try:
                await self._bridge.run(write())
            except (asyncssh.Error, OSError, LoopClosedError) as exc:
                self._error = self._error or str(exc) or exc.__class__.__name__
                raise HostProcessExitedError(
                    f"the PowerShell host {self.describe()} stopped reading its input ({self._error})"
                ) from exc

    async def receive_some(self) -> bytes:
        try:
            return await self._bridge.run(self._reader.read(_RECEIVE_SIZE))
        except (asyncssh.Error, OSError, LoopClosedError) as exc:
            self._error = self._error or str(exc) or exc.__class__.__name__
            return b""

    async def failure_detail(self) -> str:
        async def detail() -> list[str]:
            # The exit status arrives just before the channel closes; give it that moment.
            try:
                await asyncio.wait_for(self._channel.wait_closed(), 1.0)
            except TimeoutError:
                pass
            parts: list[str] = []
            status = self._channel.get_exit_status()
            signal = self._channel.get_exit_signal()
            if signal is not None:
                parts.append(f"killed by signal {signal[0]}")
            elif status is not None and status >= 0:
                parts.append(f"exit code {status}")
            return parts

        try:
            parts = await self._bridge.run(detail())
        except LoopClosedError:
            parts = []
        if self._error:
            parts.append(f"connection: {self._error}")
        tail = b"".join(self._stderr_tail)[-_STDERR_KEEP:].decode("utf-8", "replace").strip()
        if tail:
            parts.append("stderr: " + " | ".join(line.strip() for line in tail.splitlines()[-6:]))
        return "; ".join(parts)

    async def aclose(self, *, graceful: bool = True) -> None:
        """Send EOF (the subsystem then exits on its own), wait briefly, then close the channel."""

        async def close() -> None:
            try:
                if graceful and not self._channel.is_closing():
                    self._writer.write_eof()
                    try:
                        await asyncio.wait_for(self._channel.wait_closed(), 5)
                    except TimeoutError:
                        pass
            except (asyncssh.Error, OSError):
                pass
            self._channel.close()
            try:
                await asyncio.wait_for(self._channel.wait_closed(), 2)
            except TimeoutError:
                pass
            if self._stderr_task is not None:
                self._stderr_task.cancel()
                await asyncio.gather(self._stderr_task, return_exceptions=True)

        with trio.CancelScope(shield=True):
            try:
                await self._bridge.run(close())
            except LoopClosedError:
                pass


def default_identity_files() -> Sequence[str]:
    """The user's default private keys that exist (for messages and the inventory's defaults)."""
    home = Path.home() / ".ssh"
    return [str(home / n) for n in ("id_ed25519", "id_ecdsa", "id_rsa") if (home / n).exists()]


_USER_HOST_RE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^:/@]+)(?::(?P<port>\d+))?$")


def parse_user_host(text: str) -> SshTarget:
    """``user@host[:port]`` (the inventory's ``address``) or an ``ssh://`` URL, to a target."""
    if text.startswith("ssh://"):
        return parse_ssh_url(text)
    match = _USER_HOST_RE.match(text)
    if match is None:
        raise ConfigError(f"not an SSH address: {text!r}", hint="write it as user@host[:port]")
    host = match["host"].strip("[]")
    return SshTarget(host=host, port=int(match["port"] or 22), username=match["user"])
