"""Registered schedules and the last tick each handled, in ``$VMBUSOPS_HOME/agent/schedules.sqlite``.

One row per bundle name: registering a newer version of a bundle (the replay store already
refuses older ones) replaces its schedule. ``last_tick`` is written when a tick is handled (run,
skipped or missed), so after a restart the agent knows exactly which ticks it did not see.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vmbusops.bundle.manifest import Manifest, manifest_from_dict
from vmbusops.errors import ConfigError
from vmbusops.home import home_path
from vmbusops.storage import open_wal_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name          TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    bundle_id     TEXT NOT NULL,
    manifest      TEXT NOT NULL,
    bundle_dir    TEXT,
    source        TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    last_tick     TEXT NOT NULL,
    last_job      INTEGER,
    last_outcome  TEXT,
    missed        INTEGER NOT NULL DEFAULT 0,
    enable_guest_services INTEGER NOT NULL DEFAULT 0,
    envelope      TEXT
);
"""
#: Columns added since the first schema, added to an older store when it is opened.
_ADDED_COLUMNS = (
    ("schedules", "enable_guest_services", "INTEGER NOT NULL DEFAULT 0"),
    ("schedules", "envelope", "TEXT"),
)


def schedules_path() -> Path:
    return home_path("agent", "schedules.sqlite")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntry:
    name: str
    version: int
    bundle_id: str
    manifest: Manifest
    bundle_dir: str | None
    source: str
    #: The trust scope that accepted the bundle lets its steps enable the Guest Service Interface.
    enable_guest_services: bool
    #: The signed envelope (JSON) the bundle was accepted with: each tick verifies it again.
    envelope: bytes | None
    registered_at: datetime
    last_tick: datetime
    last_job: int | None
    last_outcome: str | None
    missed: int


class ScheduleStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or schedules_path()
        self._lock = threading.Lock()
        self._db = open_wal_database(self.path, _SCHEMA, what="the schedule store", added_columns=_ADDED_COLUMNS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def register(
        self,
        manifest: Manifest,
        *,
        bundle_dir: str | None,
        source: str,
        now: datetime,
        enable_guest_services: bool = False,
        envelope: bytes | None = None,
    ) -> ScheduleEntry:
        self._exec(
            "INSERT OR REPLACE INTO schedules (name, version, bundle_id, manifest, bundle_dir, source,"
            " enable_guest_services, envelope, registered_at, last_tick, last_job, last_outcome, missed)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0)",
            (
                manifest.name, manifest.version, manifest.id, manifest.to_json().decode("utf-8"), bundle_dir,
                source, int(enable_guest_services), envelope.decode("utf-8") if envelope is not None else None,
                now.isoformat(), now.isoformat(),
            ),
        )  # fmt: skip
        return self.get(manifest.name)

    def has_bundle(self, bundle_id: str) -> bool:
        """Whether a schedule of this bundle id is registered (its acceptance stands)."""
        return bool(self._exec("SELECT 1 FROM schedules WHERE bundle_id = ? LIMIT 1", (bundle_id,)))

    def handled(
        self, name: str, tick: datetime, *, outcome: str, job: int | None = None, missed: int = 0
    ) -> None:
        self._exec(
            "UPDATE schedules SET last_tick = MAX(last_tick, ?), last_outcome = ?, missed = missed + ?,"
            " last_job = COALESCE(?, last_job) WHERE name = ?",
            (tick.isoformat(), outcome, missed, job, name),
        )

    def remove(self, name: str) -> bool:
        """Forget the schedule ``name``: no tick of it runs from now on, in any process that reads
        this store (a running agent looks again before each tick). Whether there was one."""
        with self._lock:
            return self._db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount > 0

    def get(self, name: str) -> ScheduleEntry:
        found = [e for e in self.all() if e.name == name]
        if not found:
            raise ConfigError(f"no schedule named {name!r}")
        return found[0]

    def all(self) -> list[ScheduleEntry]:
        rows = self._exec(
            "SELECT name, version, bundle_id, manifest, bundle_dir, source, registered_at, last_tick,"
            " last_job, last_outcome, missed, enable_guest_services, envelope FROM schedules ORDER BY name"
        )
        return [
            ScheduleEntry(
                name=r[0],
                version=r[1],
                bundle_id=r[2],
                manifest=manifest_from_dict(json.loads(r[3])),
                bundle_dir=r[4],
                source=r[5],
                enable_guest_services=bool(r[11]),
                envelope=r[12].encode("utf-8") if r[12] is not None else None,
                registered_at=datetime.fromisoformat(r[6]),
                last_tick=datetime.fromisoformat(r[7]),
                last_job=r[8],
                last_outcome=r[9],
                missed=r[10],
            )
            for r in rows
        ]
