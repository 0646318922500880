"""A private asyncio event loop in its own thread, awaited from trio.

asyncssh is asyncio-only and the agent is trio. Rather than replace the global asyncio loop policy
(trio-asyncio does, and warns under ``-W error``), each SSH connection gets an ordinary asyncio
loop running in a daemon thread; trio tasks hand it coroutines with
:func:`asyncio.run_coroutine_threadsafe` and sleep on a :class:`trio.Event` that the future's
done-callback sets through the trio token. No trio worker thread is held while waiting, so a
thousand pending reads cost a thousand futures, not a thousand threads.

Cancelling the trio side cancels the asyncio task. Closing the loop cancels whatever is left,
drains async generators and the default executor, then closes the loop, so no asyncio
``ResourceWarning`` escapes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class LoopClosedError(RuntimeError):
    """The bridge's asyncio loop is no longer running."""


class AsyncioThread:
    """One asyncio loop in one daemon thread. Start with :meth:`start`, end with :meth:`aclose`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise LoopClosedError("the asyncio loop has not started")
        return self._loop

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(self._ready.wait)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the asyncio loop and return its result; cancellation reaches it."""
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            coro.close()
            raise LoopClosedError("the asyncio loop is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError as exc:
            raise LoopClosedError("the asyncio task was cancelled (its loop is closing)") from exc

    async def aclose(self) -> None:
        """Stop the loop (cancelling what is left on it) and join the thread."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
