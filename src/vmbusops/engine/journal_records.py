"""How the journal stores records: in chunks, one row for consecutive records of one run.

A flood of output is what a journal mostly holds, and a guest's records come in bursts: a
PowerShell pipeline's packet carries many records of one run. Stored one row each, every record
paid for a B-tree entry in the table and another in the per-run index, and that was most of what
journaling a record cost. So a commit's records are grouped, in the order they were committed,
into runs of consecutive records of one run, one step and one attempt, and each group is one row
of ``record_chunks`` (at most :data:`CHUNK_RECORDS` records):

* ``n`` is the number of its **last** record in the job, ``count`` how many it holds: its records
  are numbered ``n - count + 1`` to ``n``, with no gap (a job's records are numbered 1, 2, 3...
  in the order they were committed, and a chunk ends where another run's record comes between);
* ``seq`` is its last record's ``seq`` in the run, and a chunk's seqs have no gap either (a chunk
  ends where they would: every record is checked);
* ``time`` is its last record's time (when the job last did something), and ``times`` every
  record's, as 8-byte IEEE doubles, little-endian, in order (exact, and cheaper to write than
  text);
* ``body`` holds a line per record: ``stream TAB content``, the content the record's JSON, which
  the engine never writes with a raw line feed (compact JSON escapes every control character in
  its strings). A record whose content holds one all the same (an older journal's, from a host
  that wrote its JSON otherwise) is a chunk of its own, whose body is that one record whole.

So the key ``(job_id, n)`` still pages a job with one comparison: the chunk holding the first
record past a cursor is the first whose ``n`` is past it, and the page starts inside it. A run's
chunks are found through ``(run_id, n)``, in ``n`` order, which is also ``seq`` order.

Readers never see a chunk: :func:`unpack` gives the same tuples (:data:`StoredRecord`) a row per
record gave, and :func:`insert` takes them.
"""

from __future__ import annotations

import array
import itertools
import operator
import sqlite3
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final

StoredRecord = tuple[int, int, int, int, str | None, int, str, float, str]
"""(job_id, n, run_id, seq, step, attempt, stream, time, content JSON), as stored: ``n`` numbers
the job's records in the order they were committed."""

ChunkRow = tuple[int, int, int, int, int, str | None, int, float, bytes, str]
"""(job_id, n, run_id, seq, count, step, attempt, time, times, body): a row of ``record_chunks``."""

#: Records one chunk holds at most: a reader of one record past a cursor unpacks no more.
CHUNK_RECORDS: Final = 256

TABLE: Final = """
CREATE TABLE IF NOT EXISTS record_chunks (
    job_id  INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    run_id  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    step    TEXT,
    attempt INTEGER NOT NULL,
    time    REAL NOT NULL,
    times   BLOB NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS record_chunks_run ON record_chunks (run_id, n);
"""

#: A job's chunks past a record (``n > ?``), in order: what :func:`unpack` reads of each.
JOB_CHUNKS: Final = (
    "SELECT job_id, n, run_id, seq, count, step, attempt, times, body FROM record_chunks"
    " WHERE job_id = ? AND n > ? ORDER BY n"
)
#: The same of a run's chunks, through ``record_chunks_run``.
RUN_CHUNKS: Final = (
    "SELECT job_id, n, run_id, seq, count, step, attempt, times, body FROM record_chunks"
    " WHERE run_id = ? AND n > ? ORDER BY n"
)

#: The job's highest ``n`` (None: no record yet): the last entry of its key.
LAST_N_OF_JOB: Final = "SELECT MAX(n) FROM record_chunks WHERE job_id = ?"
#: The run's highest ``seq``, 0 before its first record (its seqs have no gap: also its count).
LAST_SEQ_OF_RUN: Final = (
    "SELECT COALESCE((SELECT seq FROM record_chunks WHERE run_id = ? ORDER BY n DESC LIMIT 1), 0)"
)
#: The time of a job's last record (a correlated subquery on ``jobs.id``).
LAST_TIME_OF_JOB: Final = "(SELECT c.time FROM record_chunks c WHERE c.job_id = jobs.id ORDER BY c.n DESC LIMIT 1)"

_INSERT: Final = "INSERT INTO record_chunks (job_id, n, run_id, seq, count, step, attempt, time, times, body) VALUES "
_ROW: Final = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Chunks inserted by one statement at most (10 parameters each, well under SQLite's limit).
_ROWS_PER_INSERT: Final = 64

_group_key = operator.itemgetter(0, 2, 4, 5)  # job, run, step, attempt
_time = operator.itemgetter(7)
_seq = operator.itemgetter(3)
_SWAP: Final = sys.byteorder != "little"
_one_time = struct.Struct("<d").unpack
#: Chunk rows fetched from SQLite at a time while a page fills.
_FETCH: Final = 64


def chunks(stored: Sequence[StoredRecord]) -> list[ChunkRow]:
    """``stored`` (in the order committed: ``n`` rising) as chunk rows: consecutive records of
    one run, step and attempt whose ``n`` and ``seq`` both follow on, at most
    :data:`CHUNK_RECORDS` each."""
    rows: list[ChunkRow] = []
    for _, group in itertools.groupby(stored, _group_key):
        records = list(group)
        for at in range(0, len(records), CHUNK_RECORDS):
            part = records if len(records) <= CHUNK_RECORDS else records[at : at + CHUNK_RECORDS]
            first, size = part[0], len(part)
            # n rises through ``stored`` (every caller numbers, or reads, in n order), so its ends
            # tell; every seq is checked, since an older journal's may be out of order.
            if part[-1][1] - first[1] == size - 1 and list(map(_seq, part)) == list(range(first[3], first[3] + size)):
                row = _chunk(part)
                if row[-1].count("\n") == size - 1:
                    rows.append(row)
                else:  # a content with a raw line feed: each record a chunk of its own
                    rows.extend(_chunk([r]) for r in part)
            else:  # never from the engine's writer
                rows.extend(_chunk(list(run)) for run in _consecutive(part))
    return rows


def _chunk(part: list[StoredRecord]) -> ChunkRow:
    last = part[-1]
    times = array.array("d", map(_time, part))
    if _SWAP:
        times.byteswap()  # stored little-endian whatever the machine
    body = "\n".join([f"{r[6]}\t{r[8]}" for r in part])
    return (last[0], last[1], last[2], last[3], len(part), last[4], last[5], last[7], times.tobytes(), body)


def _consecutive(part: list[StoredRecord]) -> Iterable[list[StoredRecord]]:
    run = [part[0]]
    for record in part[1:]:
        prev = run[-1]
        if record[1] == prev[1] + 1 and record[3] == prev[3] + 1:
            run.append(record)
        else:
            yield run
            run = [record]
    yield run


def insert(db: sqlite3.Connection, stored: Sequence[StoredRecord]) -> None:
    """Store ``stored`` (inside the caller's write transaction), a statement per many chunks."""
    rows = chunks(stored)
    for at in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[at : at + _ROWS_PER_INSERT]
        db.execute(_INSERT + ", ".join([_ROW] * len(part)), [v for row in part for v in row])


def read(
    db: sqlite3.Connection,
    job_id: int,
    *,
    run_id: int | None = None,
    after: int = 0,
    stream: str | None = None,
    limit: int = sys.maxsize,
) -> list[StoredRecord]:
    """The job's records numbered past ``after``, optionally of one run or stream, up to
    ``limit``: chunks are read a few at a time from the one holding the record after ``after``
    until the page is full, so a page without a stream unpacks at most one chunk more than it
    returns (with one, it reads past the other streams' records, as a filter on any key must)."""
    sql, params = (RUN_CHUNKS, (run_id, after)) if run_id is not None else (JOB_CHUNKS, (job_id, after))
    out: list[StoredRecord] = []
    cursor = db.execute(sql, params)
    try:
        _read_into(cursor, after, stream, out, limit)
    except struct.error as exc:  # a chunk's times are not 8 bytes a record
        raise ValueError(f"a chunk of job {job_id} is damaged: {exc}") from exc
    finally:
        cursor.close()
    return out


def _read_into(cursor: sqlite3.Cursor, after: int, stream: str | None, out: list[StoredRecord], limit: int) -> None:
    # A few chunks at a time: a chunk holds at least one record, so never more rows than the
    # page still needs, and few beyond it when chunks are large.
    while len(out) < limit and (rows := cursor.fetchmany(min(limit - len(out), _FETCH))):
        for row in rows:
            if row[4] == 1:  # one record: the common case where runs interleave finely
                j, n, r, seq, _, step, attempt, packed, body = row
                if n > after:
                    kind, content = body.split("\t", 1)
                    if stream is None or kind == stream:
                        out.append((j, n, r, seq, step, attempt, kind, _one_time(packed)[0], content))
            else:
                unpack(row, after, stream, out, limit)
            if len(out) >= limit:
                break


def unpack(row: Sequence[Any], after: int, stream: str | None, out: list[StoredRecord], limit: int) -> None:
    """Append the records of the chunk ``row`` (as :data:`JOB_CHUNKS` reads it) numbered past
    ``after``, of ``stream`` if one is given, to ``out`` until it holds ``limit``."""
    job_id, n, run_id, seq, count, step, attempt, packed, body = row
    lines = body.split("\n") if count > 1 else [body]
    if len(lines) != count or len(packed) != 8 * count:
        raise ValueError(f"a chunk of job {job_id} holds {len(lines)} records and {len(packed)} bytes of times, not {count}")
    times = struct.unpack(f"<{count}d", packed)
    first_n = n - count + 1
    to_seq = seq - n  # a record's seq is its n plus this, all through the chunk
    for i in range(max(0, after + 1 - first_n), count):
        kind, content = lines[i].split("\t", 1)
        if stream is not None and kind != stream:
            continue
        out.append((job_id, first_n + i, run_id, first_n + i + to_seq, step, attempt, kind, times[i], content))
        if len(out) >= limit:
            return


def upgrade_rows(db: sqlite3.Connection) -> None:
    """Move a schema-3 ``records`` table (a row per record) into chunks, inside the caller's
    write transaction: each job's records in ``n`` order, chunked as a commit's are.

    Chunks may hold records of a job already: an older vmbusops that kept writing after this one
    had moved the journal made its ``records`` table again, and numbered from 1. Such records are
    moved numbered after the job's last ``n`` and their run's last ``seq``, so none is lost and
    none shares a number.
    """
    after_n: dict[int, int] = {}
    after_seq: dict[int, int] = {}
    cursor = db.execute("SELECT job_id, n, run_id, seq, step, attempt, stream, time, content FROM records ORDER BY job_id, n")
    while page := cursor.fetchmany(10_000):
        moved: list[StoredRecord] = []
        for job_id, n, run_id, seq, step, attempt, stream, at, content in page:
            dn = after_n.get(job_id)
            if dn is None:
                last = db.execute(LAST_N_OF_JOB, (job_id,)).fetchone()[0]
                dn = after_n[job_id] = last + 1 - n if last is not None and n <= last else 0
            ds = after_seq.get(run_id)
            if ds is None:
                top = db.execute(LAST_SEQ_OF_RUN, (run_id,)).fetchone()[0]
                ds = after_seq[run_id] = top + 1 - seq if top and seq <= top else 0
            moved.append((job_id, n + dn, run_id, seq + ds, step, attempt, stream, at, content))
        insert(db, moved)
    db.execute("DROP TABLE records")


__all__ = [
    "CHUNK_RECORDS",
    "JOB_CHUNKS",
    "LAST_N_OF_JOB",
    "LAST_SEQ_OF_RUN",
    "LAST_TIME_OF_JOB",
    "RUN_CHUNKS",
    "TABLE",
    "ChunkRow",
    "StoredRecord",
    "chunks",
    "insert",
    "read",
    "unpack",
    "upgrade_rows",
]
