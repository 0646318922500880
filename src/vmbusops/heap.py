"""The cyclic garbage collector in vmbusops' long-running commands: the agent, the fleet's
controller, and ``vmbusops logs``.

CPython's full collection traverses every object the collector tracks, and a process of ours
holds tens of thousands of them from the moment it has imported what it runs (modules, classes,
functions: about 53,000 for ``logs``, 67,000 for the agent), none of which ever becomes garbage.
A full collection comes once enough objects have survived the young ones, and a reader of a big
job makes a page of views at a time that survive them: reading a million records in pages of
2,000 made one every 25 pages or so, each 25 to 45 ms on two shared cores, on top of the page's
own 10 ms. The agent and the controller pay the same pause in their one event loop, for every
follower and API call.

So once a command has imported what it runs, :func:`settle` moves everything it tracks then
(all of it alive: at the points it is called no cyclic garbage is waiting) into the collector's
permanent generation (``gc.freeze``): later collections, full ones too, look
only at what was made since, and take about a millisecond. Frozen objects are still freed when
their last reference goes; only a reference cycle among them would now never be collected, and
what is alive at that point lives as long as the process.

It also raises the young generation's threshold from 700 to :data:`YOUNG_THRESHOLD`. A young
collection fires when 700 more tracked objects are alive than at the last one, and a flood of
output keeps that many alive for a moment all the time: each record waits in the journal writer's
buffer as a tuple until its commit (about a thousand of them), and the commit hands on as many
stored tuples. So the agent made a young collection every 700 records or so, 0.3 ms each (every
tuple's items read, none of them garbage), and every tenth an older one: with 100 guests
printing, about 0.8 us of every journaled record, where bare ``exec`` spends 0.15. With 10,000
the buffer's ebb and flow never reaches it: the records are freed by reference count as they
always were, and a collection comes only once that many more objects stay alive (or cyclic
garbage has piled up), a few milliseconds each when it does. The older generations keep their
thresholds, counted in young collections, so they come less often too.

A collection, young or not, stops the whole process where it comes, and it comes where objects
are made: in an event loop's process, that is in the middle of a request's handling, since an
HTTP request leaves some forty objects of cyclic garbage behind (the server's and trio's), which
only a collection frees. In the agent a young collection of 10,000 took 2 to 10 ms and the
older one every tenth 20 to 36 ms, mostly inside a request. So the agent also collects when its
loop rests (:class:`RestingCollector`, a trio instrument): once :data:`REST_YOUNG` more objects
are tracked than at the last collection, the young generation is collected the moment the loop,
having run everything that was ready, would wait (and the older ones when their counts say so, as
CPython would): the young about 0.7 ms each, the older about 3 ms (the first after start-up,
which holds what start-up made, about 10 ms), and when nothing is in flight, so the objects of a
request under way are not carried into the older generations. A loop that never rests still
collects at :data:`YOUNG_THRESHOLD`, as before.

Only the ``vmbusops`` program does it (:func:`program_started`, from its entry point): a test
or any other caller of the commands keeps its collector as it was.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from trio.abc import Instrument

#: The young generation's collection threshold once settled (CPython's default is 700).
YOUNG_THRESHOLD: Final = 10_000
#: Objects tracked since the last collection past which a resting event loop collects the young
#: generation (:class:`RestingCollector`): some 0.7 ms of the loop's, about a catch-up page's.
REST_YOUNG: Final = 2_000

_program = False
_settled = False


def program_started() -> None:
    """This process is the ``vmbusops`` program: :func:`settle` may change its collector."""
    global _program  # noqa: PLW0603 (one flag for the process, as gc's own state is)
    _program = True


def settle() -> None:
    """Freeze what is alive now and raise the young threshold to :data:`YOUNG_THRESHOLD`, in the
    ``vmbusops`` program (else nothing): a command calls it once it has imported what it runs and
    before it reads or serves for long."""
    global _settled  # noqa: PLW0603 (one flag for the process, as gc's own state is)
    if _program:
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
        _settled = True


class RestingCollector:
    """Collects when the event loop rests: before each wait of the loop that has a timeout (nothing
    is ready to run), once :data:`REST_YOUNG` more objects are tracked than at the last
    collection, the oldest generation whose count has passed its threshold, else the young one, as
    CPython chooses (a collection of one generation counts towards the next one's threshold).
    CPython also puts off the oldest until a quarter of what it holds is new; this does not, since
    a collection at rest is the one the oldest would get: the automatic ones, at
    :data:`YOUNG_THRESHOLD`, hardly come any more.

    A trio instrument by its hook's name (trio looks hooks up by name), without importing trio:
    this module is loaded by every command, the quickest too."""

    def before_io_wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        young, older, oldest = gc.get_count()
        if young < REST_YOUNG:
            return
        _, older_threshold, oldest_threshold = gc.get_threshold()
        if oldest > oldest_threshold:
            gc.collect(2)
        elif older > older_threshold:
            gc.collect(1)
        else:
            gc.collect(0)


def collect_at_rest() -> None:
    """In the ``vmbusops`` program, once :func:`settle` has run, collect when the running trio
    loop rests (:class:`RestingCollector`); else nothing."""
    if _settled:
        import trio  # here: ``vmbusops --version`` and the like load no event loop

        trio.lowlevel.add_instrument(cast("Instrument", RestingCollector()))


__all__ = ["REST_YOUNG", "YOUNG_THRESHOLD", "RestingCollector", "collect_at_rest", "program_started", "settle"]
