"""Where a follower of a job's records is: the last sequence number it has of each run (sans-IO).

A job's runs are fixed when the job is created and each run numbers its records 1, 2, 3... with
no gap (see :mod:`vmbusops.engine.journal`), so "everything up to seq N of run R, for every R" is
an exact position, whatever order records of different runs arrive in. The text form lists the
seqs in the order of the job's run ids: ``"12.0.7"`` means 12 records of the first run, none of
the second, 7 of the third (trailing zeros dropped; ``""`` is the start). It is the SSE event id,
so a client that reconnects with ``Last-Event-ID`` resumes exactly after what it had.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_CURSOR_TEXT = 64 * 1024


class CursorError(ValueError):
    pass


class Cursor:
    __slots__ = ("_index", "_seqs", "run_ids")

    def __init__(self, run_ids: Sequence[int]) -> None:
        self.run_ids = tuple(run_ids)
        self._index = {run_id: i for i, run_id in enumerate(self.run_ids)}
        self._seqs = [0] * len(self.run_ids)

    @classmethod
    def parse(cls, text: str, run_ids: Sequence[int]) -> Cursor:
        cursor = cls(run_ids)
        text = text.strip()
        if not text:
            return cursor
        if len(text) > MAX_CURSOR_TEXT:
            raise CursorError("cursor too long")
        parts = text.split(".")
        if len(parts) > len(cursor.run_ids):
            raise CursorError(f"cursor names {len(parts)} runs; the job has {len(cursor.run_ids)}")
        for i, part in enumerate(parts):
            if not part.isdigit() or len(part) > 12:
                raise CursorError(f"cursor part {part!r} is not a sequence number")
            cursor._seqs[i] = int(part)
        return cursor

    def seq(self, run_id: int) -> int:
        return self._seqs[self._index[run_id]]

    def knows(self, run_id: int) -> bool:
        return run_id in self._index

    def advance(self, run_id: int, seq: int) -> bool:
        """Move past ``seq`` of ``run_id`` if it is the next one; False if it is not (a gap or a repeat)."""
        i = self._index[run_id]
        if seq != self._seqs[i] + 1:
            return False
        self._seqs[i] = seq
        return True

    def move_to(self, run_id: int, seq: int) -> None:
        """Past ``seq`` of ``run_id`` whatever came before (a filtered read skips some seqs)."""
        i = self._index[run_id]
        self._seqs[i] = max(self._seqs[i], seq)

    def as_after(self) -> dict[int, int]:
        """The journal's ``after`` argument: run id -> last seq seen."""
        return dict(zip(self.run_ids, self._seqs, strict=True))

    def __str__(self) -> str:
        seqs = self._seqs
        end = len(seqs)
        while end and seqs[end - 1] == 0:
            end -= 1
        return ".".join(map(str, seqs[:end]))
