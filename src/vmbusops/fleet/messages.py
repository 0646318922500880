"""The fleet's messages, as values, and their strict JSON form.

The broker is a transport, never trusted: :func:`parse` accepts exactly the shapes below (the
version, the kind, every field with its type) and raises :class:`FleetMessageError` for anything
else, so a receiver logs one line and drops the message rather than acting on a guess.

Where each goes (see ``docs/adr/0007-fleet.md``):

- the log, controller subject: :class:`JobFact`, :class:`DispatchFact`, :class:`SkipFact`,
  :class:`CancelFact`, :class:`LostFact`;
- the log, a host's subject: :class:`BatchFact` (or several in one :class:`BatchesFact`),
  :class:`MovedFact`, :class:`RefusedFact`;
- a host's work subject: :class:`DispatchWork`, :class:`CancelWork`.

Each message knows its JetStream message id (:meth:`msg_id`), which makes a repeated publish of
the same fact a no-op within the stream's duplicate window.

Every message says the fleet protocol it is written in (``v``); a fleet upgraded host by host has
several at once. This build writes :data:`VERSION` and reads every version from :data:`OLDEST` on:

- 1: the first;
- 2: a run change in a batch may say what the run waits for (``waiting``: ``session``). The one
  release before protocols that had it wrote it under 1, so it is read under either.

A fact is written in the oldest protocol that carries it (:func:`encode`), so that every build
that can read what it says does: today every fact but a batch that says what a run waits for is
protocol 1. A work message goes to one host, and says the newest protocol both its controller
and that host read (the host entry's ``protocol``); the agent writes the run's facts for it,
leaving out what it cannot carry (:func:`changes_for`). See ``docs/adr/0007-fleet.md``, "Versions".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from vmbusops.errors import VmbusOpsError

#: The fleet protocol this build writes (see the module's docstring), and the oldest it reads.
VERSION = 2
OLDEST = 1
T = TypeVar("T")


class FleetMessageError(VmbusOpsError):
    """A message from the broker that is not one of the fleet's messages."""


class NewerProtocolError(FleetMessageError):
    """A message written in a fleet protocol newer than this build's: a later vmbusops wrote it."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


#: (seq, step, attempt, stream, time, record JSON text): a record as a batch carries it.
WireRecord = tuple[int, str | None, int, str, float, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlacement:
    vm: str
    vm_id: str
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStartWire:
    """Where a dispatched run stands: its steps' states (values of ``engine.states.State``),
    attempts, and the number its next record gets."""

    step_states: tuple[str, ...]
    attempts: tuple[int, ...]
    next_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFact:
    kind: ClassVar[str] = "job"
    submission: str
    bundle: str
    envelope: str
    manifest: str
    source: str
    submitter: str | None
    enable_guest_services: bool
    runs: tuple[RunPlacement, ...]
    time: float
    #: The VMs the targets selected that the signer's scope left out (JSON text of the journal's
    #: ``left_out`` column); may be absent.
    left_out: str | None = None

    def msg_id(self) -> str:
        return f"job-{self.submission}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchFact:
    kind: ClassVar[str] = "dispatch"
    job: int
    run: int
    host: str
    epoch: int
    reason: str
    time: float

    def msg_id(self) -> str:
        return f"dispatch-{self.job}-{self.run}-{self.epoch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SkipFact:
    kind: ClassVar[str] = "skip"
    job: int
    run: int
    reason: str
    code: str
    time: float

    def msg_id(self) -> str:
        return f"skip-{self.job}-{self.run}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelFact:
    kind: ClassVar[str] = "cancel"
    job: int
    #: None: the whole job.
    run: int | None
    time: float

    def msg_id(self) -> str:
        return f"cancel-{self.job}-{'all' if self.run is None else self.run}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LostFact:
    kind: ClassVar[str] = "lost"
    job: int
    run: int
    epoch: int
    reason: str
    time: float

    def msg_id(self) -> str:
        return f"lost-{self.job}-{self.run}-{self.epoch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFact:
    kind: ClassVar[str] = "batch"
    host: str
    job: int
    run: int
    epoch: int
    n: int
    records: tuple[WireRecord, ...]
    #: Run and step changes as ``engine`` serialises them (``run_id`` left out).
    changes: tuple[dict[str, Any], ...]
    time: float

    def msg_id(self) -> str:
        return f"batch-{self.host}-{self.job}-{self.run}-{self.epoch}-{self.n}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchesFact:
    """Batches of one host, in the order its commits made them, in one message: what the host's
    forwarder had queued when it published (one publish, one acknowledgement and one log message
    for many commits of many runs). Each batch is applied, fenced or skipped as if it had come
    alone; the message id is the first batch's and the count (a retry publishes the same group)."""

    kind: ClassVar[str] = "batches"
    host: str
    batches: tuple[BatchFact, ...]

    def msg_id(self) -> str:
        first = self.batches[0]
        return f"batches-{self.host}-{first.job}-{first.run}-{first.epoch}-{first.n}-{len(self.batches)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MovedFact:
    kind: ClassVar[str] = "moved"
    host: str
    job: int
    run: int
    epoch: int
    reason: str
    time: float

    def msg_id(self) -> str:
        return f"moved-{self.host}-{self.job}-{self.run}-{self.epoch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedFact:
    kind: ClassVar[str] = "refused"
    host: str
    job: int
    run: int
    epoch: int
    code: str
    reason: str
    time: float

    def msg_id(self) -> str:
        return f"refused-{self.host}-{self.job}-{self.run}-{self.epoch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchWork:
    kind: ClassVar[str] = "dispatch"
    job: int
    run: int
    vm: str
    vm_id: str
    epoch: int
    bundle: str
    start: RunStartWire
    controller: str
    time: float

    def msg_id(self) -> str:
        return dispatch_work_id(self.job, self.run, self.epoch)


def dispatch_work_id(job: int, run: int, epoch: int) -> str:
    """The message id of a run's dispatch work in an epoch."""
    return f"dispatch-{job}-{run}-{epoch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelWork:
    kind: ClassVar[str] = "cancel"
    job: int
    run: int
    epoch: int

    def msg_id(self) -> str:
        return f"cancel-{self.job}-{self.run}-{self.epoch}"


LogFact = (
    JobFact | DispatchFact | SkipFact | CancelFact | LostFact | BatchFact | BatchesFact | MovedFact | RefusedFact
)
Work = DispatchWork | CancelWork
#: What a host publishes on its log subject.
HostFact = BatchFact | BatchesFact | MovedFact | RefusedFact
_CTL: dict[str, type[Any]] = {c.kind: c for c in (JobFact, DispatchFact, SkipFact, CancelFact, LostFact)}
_HOST: dict[str, type[Any]] = {c.kind: c for c in (BatchFact, BatchesFact, MovedFact, RefusedFact)}
_WORK: dict[str, type[Any]] = {c.kind: c for c in (DispatchWork, CancelWork)}


# ---------------------------------------------------------------------- encoding
def encode(message: LogFact | Work, newest: int = VERSION) -> bytes:
    """``message`` for a receiver that reads fleet protocols up to ``newest``: a fact in the oldest
    protocol that carries it (:func:`protocol_of`; ValueError if that is newer: a batch's changes
    are made to fit first, :func:`changes_for`), work in ``newest`` itself (its host answers in
    it: work is the same in every protocol)."""
    if not OLDEST <= newest <= VERSION:
        raise ValueError(f"fleet protocol {newest} is not one this build writes ({OLDEST} to {VERSION})")
    version = newest if isinstance(message, DispatchWork | CancelWork) else protocol_of(message)
    if version > newest:
        raise ValueError(f"a {message.kind} message that needs fleet protocol {version} for a reader of {newest}")
    body: dict[str, Any] = {"v": version, "kind": message.kind}
    for f in fields(message):
        value = getattr(message, f.name)
        if value is None and f.name in _OPTIONAL.get(type(message), ()):
            continue
        body[f.name] = value
    # Tuples go out as arrays as they are; only the nested dataclasses need the hook (a batch's
    # records are thousands of small tuples a message: not copied into lists first).
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=_plain).encode("utf-8")


def protocol_of(message: LogFact | Work) -> int:
    """The oldest fleet protocol that carries ``message``: 2 for a batch in which a run change
    says what the run waits for, else 1 (work too: its ``v`` says more, see :func:`encode`)."""
    if isinstance(message, BatchFact | BatchesFact):
        for batch in message.batches if isinstance(message, BatchesFact) else (message,):
            if any("waiting" in change for change in batch.changes):
                return 2
    return OLDEST


def _plain(value: Any) -> Any:
    if isinstance(value, RunPlacement | RunStartWire | BatchFact):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    raise TypeError(f"a fleet message cannot carry a {type(value).__name__}")


# ---------------------------------------------------------------------- decoding
def parse_ctl(data: bytes) -> LogFact:
    """A message of the controller's log subject."""
    return _parse(data, _CTL, "controller log")  # type: ignore[no-any-return]


def parse_host(data: bytes, *, host: str) -> LogFact:
    """A message of ``host``'s log subject; a fact that names another host is refused (a host's
    NATS user may only publish on its own subject, and the fact must agree with it)."""
    fact = _parse(data, _HOST, "host log")
    claims = {b.host for b in fact.batches} | {fact.host} if isinstance(fact, BatchesFact) else {fact.host}
    if claims != {host}:
        other = sorted(claims - {host})[0]
        raise FleetMessageError(f"a fact on host {host!r}'s subject claims host {other!r}")
    return fact  # type: ignore[no-any-return]


def parse_work(data: bytes) -> Work:
    return parse_work_versioned(data)[0]


def parse_work_versioned(data: bytes) -> tuple[Work, int]:
    """A work message and the fleet protocol it was written in (the agent answers in it)."""
    return _parse_versioned(data, _WORK, "work")


def _parse(data: bytes, kinds: dict[str, type[Any]], where: str) -> Any:
    return _parse_versioned(data, kinds, where)[0]


def _parse_versioned(data: bytes, kinds: dict[str, type[Any]], where: str) -> tuple[Any, int]:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FleetMessageError(f"{where} message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FleetMessageError(f"{where} message is not a JSON object")
    version = body.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < OLDEST:
        raise FleetMessageError(f"{where} message has version {version!r}, expected {OLDEST} to {VERSION}")
    if version > VERSION:
        raise NewerProtocolError(
            f"{where} message is in fleet protocol {version}; this vmbusops reads {OLDEST} to {VERSION}:"
            " upgrade it", version,
        )  # fmt: skip
    kind = body.get("kind")
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FleetMessageError(f"{where} message has unknown kind {kind!r}")
    return _build(cls, body, where, {"v", "kind"}), version


def changes_for(changes: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    """A batch's changes (``change_to_json``) as fleet protocol ``version`` carries them: before 2,
    a run change does not say what the run waits for."""
    if version >= 2:
        return changes
    return [{k: v for k, v in c.items() if k != "waiting"} if "waiting" in c else c for c in changes]


def _build(cls: type[Any], body: dict[str, Any], where: str, header: set[str]) -> Any:
    kind = cls.kind
    shape = _SHAPES.get(cls)
    if shape is None:
        names = tuple(f.name for f in fields(cls))
        shape = _SHAPES[cls] = (names, frozenset(names), tuple(_OVERRIDES.get((cls, n), _FIELDS[n]) for n in names))
    names, known, checks = shape
    extra = body.keys() - known - header
    if extra:
        raise FleetMessageError(f"{where} {kind} message has unknown field(s) {', '.join(sorted(extra))}")
    values: dict[str, Any] = {}
    for name, check in zip(names, checks, strict=True):
        if name not in body:
            if name in _OPTIONAL.get(cls, ()):
                continue
            raise FleetMessageError(f"{where} {kind} message lacks {name!r}")
        try:
            values[name] = check(body[name])
        except (TypeError, ValueError) as exc:
            raise FleetMessageError(f"{where} {kind} message: {name}: {exc}") from None
    return cls(**values)


#: Per message class: its field names, as a set, and each field's check (read once).
_SHAPES: dict[type[Any], tuple[tuple[str, ...], frozenset[str], tuple[Callable[[Any], Any], ...]]] = {}


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


def _pos(v: Any) -> int:
    n = _int(v)
    if n < 1:
        raise ValueError(f"expected a positive integer, got {n}")
    return n


def _nonneg(v: Any) -> int:
    n = _int(v)
    if n < 0:
        raise ValueError(f"expected an integer >= 0, got {n}")
    return n


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _opt(fn: Callable[[Any], T]) -> Callable[[Any], T | None]:
    return lambda v: None if v is None else fn(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return float(v)


def _digest(v: Any) -> str:
    s = _str(v)
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError("expected a SHA-256 as 64 lowercase hex digits")
    return s


def _host(v: Any) -> str:
    s = _str(v)
    if s not in _HOSTS_SEEN:
        from vmbusops.fleet.names import _HOST_NAME

        if not _HOST_NAME.fullmatch(s):
            raise ValueError(f"{s!r} is not a fleet host name")
        if len(_HOSTS_SEEN) < 4096:
            _HOSTS_SEEN.add(s)
    return s


#: Host names found valid (a fleet has a few hundred; checked once each).
_HOSTS_SEEN: set[str] = set()


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list, got {type(v).__name__}")
    return v


def _obj(v: Any, keys: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeError(f"expected an object, got {type(v).__name__}")
    if set(v) != keys:
        raise ValueError(f"expected exactly the keys {', '.join(sorted(keys))}")
    return v


def _placement(v: Any) -> RunPlacement:
    o = _obj(v, {"vm", "vm_id", "host"})
    return RunPlacement(vm=_str(o["vm"]), vm_id=_str(o["vm_id"]), host=_host(o["host"]))


def _start(v: Any) -> RunStartWire:
    o = _obj(v, {"step_states", "attempts", "next_seq"})
    states = tuple(_str(s) for s in _list(o["step_states"]))
    attempts = tuple(_nonneg(a) for a in _list(o["attempts"]))
    if len(states) != len(attempts):
        raise ValueError("step_states and attempts differ in length")
    return RunStartWire(step_states=states, attempts=attempts, next_seq=_pos(o["next_seq"]))


def _record(v: Any) -> WireRecord:
    r = _list(v)
    if len(r) != 6:
        raise ValueError("a record is [seq, step, attempt, stream, time, json]")
    return (_pos(r[0]), None if r[1] is None else _str(r[1]), _nonneg(r[2]), _str(r[3]), _num(r[4]), _str(r[5]))


def _batches(v: Any) -> tuple[BatchFact, ...]:
    items = _list(v)
    if not items:
        raise ValueError("expected at least one batch")
    return tuple(_batch(item) for item in items)


_BATCH_KEYS = frozenset(f.name for f in fields(BatchFact))


def _batch(v: Any) -> BatchFact:
    """One batch of a ``batches`` message: the fields of a ``batch`` message, no more, no less
    (spelled out rather than through :func:`_build`: there are many of them)."""
    if not isinstance(v, dict):
        raise TypeError(f"expected a batch object, got {type(v).__name__}")
    if v.keys() != _BATCH_KEYS:
        extra, missing = set(v) - _BATCH_KEYS, _BATCH_KEYS - set(v)
        raise ValueError(
            f"a batch has unknown field(s) {', '.join(sorted(extra))}" if extra
            else f"a batch lacks {', '.join(sorted(missing))}"
        )  # fmt: skip
    return BatchFact(
        host=_host(v["host"]), job=_pos(v["job"]), run=_pos(v["run"]), epoch=_pos(v["epoch"]), n=_pos(v["n"]),
        records=tuple(_record(r) for r in _list(v["records"])), changes=tuple(_change(c) for c in _list(v["changes"])),
        time=_num(v["time"]),
    )  # fmt: skip


def _change(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or v.get("t") not in ("run", "step"):
        raise ValueError("a change is an object with t = run or step")
    return v


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "submission": _str,
    "bundle": _digest,
    "envelope": _str,
    "manifest": _str,
    "source": _str,
    "submitter": _opt(_str),
    "enable_guest_services": _bool,
    "runs": lambda v: tuple(_placement(p) for p in _list(v)),
    "time": _num,
    "job": _pos,
    "run": _pos,
    "host": _host,
    "epoch": _pos,
    "reason": _str,
    "code": _str,
    "n": _pos,
    "records": lambda v: tuple(_record(r) for r in _list(v)),
    "changes": lambda v: tuple(_change(c) for c in _list(v)),
    "vm": _str,
    "vm_id": _str,
    "start": _start,
    "controller": _str,
    "batches": _batches,
    "left_out": _opt(_str),
}

#: Fields a message may leave out (then their default); left out when encoded as None.
_OPTIONAL: dict[type[Any], tuple[str, ...]] = {JobFact: ("left_out",)}

#: Fields whose type differs in one message.
_OVERRIDES: dict[tuple[type[Any], str], Callable[[Any], Any]] = {(CancelFact, "run"): _opt(_pos)}
