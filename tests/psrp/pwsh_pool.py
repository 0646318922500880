"""One real PowerShell runspace pool shared by the tests of a module.

A pwsh costs one to two seconds to start here, and every test of a module would otherwise pay it.
Each test runs in its own trio run, so the shared pool lives on a trio loop of its own in a
thread; a test hands it a coroutine function (``await shared.run(fn)``) that runs there with the
pool and returns plain records. Tests that break their pool (kill the server) open their own.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from vmbusops.psrp.client import RunspacePool, open_runspace_pool
from vmbusops.psrp.transport import ProcessTransport, Transport

T = TypeVar("T")


def pwsh_argv(pwsh: str) -> list[str]:
    """PowerShell's own OutOfProc server, as ``--host pwsh`` starts it."""
    return [pwsh, "-NoLogo", "-NoProfile", "-s"]


def pwsh_connector(pwsh: str) -> Callable[[trio.Nursery], Awaitable[Transport]]:
    async def connect(nursery: trio.Nursery) -> Transport:
        return await ProcessTransport.start(pwsh_argv(pwsh), nursery=nursery)

    return connect


class SharedPool:
    """A runspace pool on a real pwsh, served from a thread with its own trio loop."""

    def __init__(self, pwsh: str, *, max_runspaces: int = 8) -> None:
        self._pwsh = pwsh
        self._max_runspaces = max_runspaces
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._pool: RunspacePool | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="pwsh-pool", daemon=True)

    def start(self) -> SharedPool:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        assert self._pool is not None, "the shared pwsh pool did not open within 60 s"
        return self

    def _serve(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with open_runspace_pool(pwsh_connector(self._pwsh), max_runspaces=self._max_runspaces) as pool:
                self._pool = pool
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test that starts or uses the pool
            self._error = exc
        finally:
            self._ready.set()

    async def run(self, fn: Callable[[RunspacePool], Awaitable[T]], *, timeout: float = 60) -> T:
        """Run ``fn(pool)`` on the pool's loop; its result or exception comes back here."""
        token, pool = self._token, self._pool
        assert token is not None and pool is not None

        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await fn(pool)

        def call() -> T:
            return trio.from_thread.run(bounded, trio_token=token)

        return await trio.to_thread.run_sync(call)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            stop = self._stop
            try:
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)


def shared_pool_fixture(max_runspaces: int = 8) -> Any:
    """A module-scoped fixture: ``shared = shared_pool_fixture()`` in a test module."""
    import pytest

    @pytest.fixture(scope="module")
    def shared(pwsh_path: str) -> Any:
        pool = SharedPool(pwsh_path, max_runspaces=max_runspaces).start()
        try:
            yield pool
        finally:
            pool.close()

    return shared
