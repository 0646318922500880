"""Byte-stream transports that carry OutOfProc framing.

The runspace pool needs only a duplex byte stream: ``send_all``, ``receive_some`` (``b""`` at
end of input), ``aclose``, and a one-line ``describe`` for error messages. A child process's
stdin/stdout is one (``powershell.exe -ServerMode``, ``pwsh -ServerMode``, the simulator);
an SSH channel to the host's ``powershell`` subsystem is another.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from vmbusops.errors import ConfigError, HostProcessExitedError, TransportError

# No -Version: on powershell.exe it asks for an older engine (-Version 2 loads PowerShell 2.0
# semantics) and is not how a 5.1 host is started; powershell.exe is Windows PowerShell 5.1.
POWERSHELL_ARGV = ("powershell.exe", "-NoLogo", "-NoProfile", "-ServerMode")
PWSH_ARGV = ("pwsh", "-NoLogo", "-NoProfile", "-ServerMode")
#: Where to look for PowerShell 7 first (an executable path).
ENV_PWSH = "VMBUSOPS_PWSH"
#: A host process that will not start because of what it was given (the simulator's lab file or
#: state directory) writes one line to stderr, this prefix then ``{"message": ..., "hint": ...}``,
#: and exits; :class:`ProcessTransport` raises it as the :class:`ConfigError` it is, so the
#: operator reads the host's own words and a usage error's exit code, not "closed its output".
REFUSAL_PREFIX = "vmbusops-host-refused: "


def refusal_line(exc: ConfigError) -> bytes:
    """The stderr line a host process writes when it refuses to start (see :data:`REFUSAL_PREFIX`)."""
    return (REFUSAL_PREFIX + json.dumps({"message": exc.message, "hint": exc.hint}) + "\n").encode("utf-8")


def find_pwsh() -> str | None:
    """The PowerShell 7 to use: $VMBUSOPS_PWSH, ``pwsh`` on PATH, or ../shared/pwsh/pwsh beside the checkout.

    The same order as the test suite's and scripts/_bootstrap.sh's ``find_pwsh``.
    """
    explicit = os.environ.get(ENV_PWSH)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("pwsh")
    if on_path:
        return on_path
    # src/vmbusops/psrp/transport.py -> the checkout's parent folder.
    staged = Path(__file__).resolve().parents[4] / "shared" / "pwsh" / "pwsh"
    return str(staged) if os.access(staged, os.X_OK) else None


def require_pwsh() -> str:
    """:func:`find_pwsh`, or a one-line ConfigError saying where it looked."""
    pwsh = find_pwsh()
    if pwsh is None:
        explicit = os.environ.get(ENV_PWSH)
        raise ConfigError(
            f"{ENV_PWSH}={explicit!r} is not an executable PowerShell 7"
            if explicit
            else "no PowerShell 7 found: not in $VMBUSOPS_PWSH, not on PATH as pwsh, not in ../shared/pwsh",
            hint="install PowerShell 7 or set VMBUSOPS_PWSH to its pwsh",
        )
    return pwsh


def simulator_argv(*, lab: str | None = None, state_dir: str | None = None) -> tuple[str, ...]:
    """The command line that starts the simulated Hyper-V host with this interpreter."""
    argv: list[str] = [sys.executable, "-m", "vmbusops.sim"]
    if lab:
        argv += ["--lab", lab]
    if state_dir:
        argv += ["--state-dir", state_dir]
    return tuple(argv)


class Transport(Protocol):
    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self) -> bytes: ...

    async def aclose(self, *, graceful: bool = True) -> None: ...

    def describe(self) -> str: ...

    async def failure_detail(self) -> str:
        """What the transport knows about why it ended (exit code, stderr tail); may be empty."""
        ...


class ProcessTransport:
    """A child process speaking OutOfProc on stdin/stdout.

    The child's stderr is drained into a small ring so that, when the child dies, the error can
    quote its last words (a Python traceback, a PowerShell start-up failure) instead of "EOF".
    """

    _STDERR_KEEP = 4096

    def __init__(self, process: trio.Process, argv: Sequence[str]) -> None:
        self._process = process
        self._argv = tuple(argv)
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._stderr_tail: deque[bytes] = deque()
        self._stderr_size = 0
        self._stderr_done = trio.Event()
        self._send_lock = trio.Lock()

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        nursery: trio.Nursery,
    ) -> ProcessTransport:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            # The host process gets its own session (process group on Windows): a Ctrl-C at the
            # terminal must reach only the agent, which then stops each pipeline cleanly over
            # PSRP before closing the host, instead of the host dying under running commands.
            isolation: dict[str, Any] = (
                {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
                if sys.platform == "win32"
                else {"start_new_session": True}
            )
            process = await trio.lowlevel.open_process(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                **isolation,
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"cannot start the PowerShell host {argv[0]!r}: not found",
                hint="on a Hyper-V host use --host local (powershell.exe); elsewhere use the simulator (--host sim)",
            ) from exc
        except OSError as exc:
            raise TransportError(f"cannot start the PowerShell host {argv[0]!r}: {exc}") from exc
        transport = cls(process, argv)
        nursery.start_soon(transport._drain_stderr)
        return transport

    async def _drain_stderr(self) -> None:
        stderr = self._process.stderr
        try:
            while stderr is not None and (chunk := await stderr.receive_some(4096)):
                self._stderr_tail.append(bytes(chunk))
                self._stderr_size += len(chunk)
                while self._stderr_size > self._STDERR_KEEP and len(self._stderr_tail) > 1:
                    self._stderr_size -= len(self._stderr_tail.popleft())
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        finally:
            self._stderr_done.set()

    async def _raise_if_refused(self) -> None:
        """At the end of the child's output: if it refused to start, raise what it said."""
        with trio.move_on_after(1.0):
            await self._stderr_done.wait()
        tail = b"".join(self._stderr_tail).decode("utf-8", "replace")
        for line in reversed(tail.splitlines()):
            if line.startswith(REFUSAL_PREFIX):
                try:
                    said = json.loads(line[len(REFUSAL_PREFIX) :])
                    message, hint = str(said["message"]), said.get("hint")
                except (ValueError, KeyError, TypeError):
                    return
                raise ConfigError(message, hint=str(hint) if hint else None)

    def describe(self) -> str:
        return f"{os.path.basename(self._argv[0])} (pid {self._process.pid})"

    async def failure_detail(self) -> str:
        parts = []
        # The child closes stdout a moment before it is reaped; give it that moment, so the
        # message can say how it ended.
        with trio.move_on_after(1.0):
            await self._process.wait()
        await trio.sleep(0.05)  # let the stderr drain task take the last bytes
        code = self._process.poll()
        if code is not None:
            parts.append(f"exit code {code}")
        tail = b"".join(self._stderr_tail)[-self._STDERR_KEEP :].decode("utf-8", "replace").strip()
        if tail:
            last = tail.splitlines()[-6:]
            parts.append("stderr: " + " | ".join(line.strip() for line in last))
        return "; ".join(parts)

    async def send_all(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The child may have exited before the first message: say how, as the receive path does.
                await self._raise_if_refused()
                detail = await self.failure_detail()
                raise HostProcessExitedError(
                    f"the PowerShell host {self.describe()} stopped reading its input"
                    + (f" ({detail})" if detail else "")
                ) from exc

    async def receive_some(self) -> bytes:
        try:
            data = bytes(await self._stdout.receive_some(256 * 1024))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            await self._raise_if_refused()
        return data

    async def aclose(self, *, graceful: bool = True) -> None:
        """Close stdin, give the child a moment to exit on its own (if graceful), then kill it."""
        with trio.CancelScope(shield=True):
            try:
                await self._stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            with trio.move_on_after(5 if graceful else 0.2):
                await self._process.wait()
            if self._process.poll() is None:
                self._process.kill()
                await self._process.wait()
            await self._stdout.aclose()
