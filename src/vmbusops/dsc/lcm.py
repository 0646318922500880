"""A sans-IO parser for the DSC Local Configuration Manager's verbose stream.

Theory of operation
-------------------
``Start-DscConfiguration -Wait -Verbose`` and ``Test-DscConfiguration -Verbose`` narrate what the
LCM does in a fixed format (WMF 5.x)::

    Perform operation 'Invoke CimMethod' with following parameters, ''methodName' = SendConfigurationApply,...
    [SERVER01]: LCM:  [ Start  Set      ]
    [SERVER01]: LCM:  [ Start  Resource ]  [[File]SampleFile]
    [SERVER01]: LCM:  [ Start  Test     ]  [[File]SampleFile]
    [SERVER01]:                            [[File]SampleFile] The destination object was found and ...
    [SERVER01]: LCM:  [ End    Test     ]  [[File]SampleFile]  in 0.0370 seconds.
    [SERVER01]: LCM:  [ Skip   Set      ]  [[File]SampleFile]
    [SERVER01]: LCM:  [ End    Resource ]  [[File]SampleFile]
    [SERVER01]: LCM:  [ End    Set      ]    in  0.2400 seconds.
    Operation 'Invoke CimMethod' complete.
    Time taken for configuration job to complete is 0.402 seconds

Each line becomes one frozen event (:class:`OperationStarted`, :class:`OperationEnded` with the
resource id and duration, :class:`ResourceMessage`, :class:`RebootRequired`, ...). A line the parser
does not recognise is never dropped: it comes out as a plain :class:`Message`.

Input comes two ways, as h11 takes bytes:

- :meth:`LcmParser.receive_record` takes one record of a PowerShell stream (verbose, warning,
  error) as it arrived over PSRP. A record is a whole logical line; nothing is wrapped.
- :meth:`LcmParser.receive_line` takes one physical line of a console transcript
  (``VERBOSE: [SERVER01]: ...``). The console wraps long records at its width, hard-splits words
  longer than a line, and prints error records as several unprefixed lines followed by
  ``    + CategoryInfo ...`` details. The parser joins wrapped lines back into their record and
  turns an error block into one :class:`LcmError`. Because a record is only known to be finished
  when the next one starts, transcript lines come out one record late; :meth:`close` flushes.

:meth:`LcmParser.next_event` returns the next event or :data:`NEED_DATA`. Nothing here raises on
any input text: the property tests feed it arbitrary strings.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TypeAlias


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class LineStream(enum.StrEnum):
    """Which PowerShell stream a line came from (a transcript names it in its prefix)."""

    VERBOSE = "verbose"
    WARNING = "warning"
    ERROR = "error"
    DEBUG = "debug"
    WHATIF = "whatif"
    PLAIN = "plain"  # no prefix: output, or a job's .Verbose collection printed bare


class Operation(enum.StrEnum):
    """The second word in ``LCM:  [ Start  Set      ]``."""

    SET = "Set"
    TEST = "Test"
    GET = "Get"
    RESOURCE = "Resource"
    COMPARE = "Compare"
    OTHER = "Other"

    @classmethod
    def parse(cls, word: str) -> Operation:
        for op in cls:
            if op.value.casefold() == word.casefold():
                return op
        return cls.OTHER


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LcmEvent:
    #: The logical line as received, without the console's ``VERBOSE: `` prefix.
    text: str
    #: The computer in ``[SERVER01]:``, when the line names one.
    node: str | None = None
    stream: LineStream = LineStream.VERBOSE

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        out = {"event": self.kind}
        out.update({k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()})
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(LcmEvent):
    """A line the parser has no more specific event for (including lines it does not know)."""

    #: The bracketed context after the node's padding: ``""`` for ``[]``, ``DSCEngine``, a path.
    scope: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceMessage(LcmEvent):
    """What a resource said about itself: ``[[File]SampleFile] The destination object ...``."""

    resource: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LcmWarning(LcmEvent):
    message: str
    resource: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LcmError(LcmEvent):
    message: str
    fqid: str | None = None
    category: str | None = None
    resource: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RebootRequired(LcmEvent):
    """``A reboot is required to progress further. Please reboot the system.``"""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationStarted(LcmEvent):
    """``[ Start  Set ]`` and friends; ``resource`` is None for the whole configuration."""

    operation: Operation
    resource: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationEnded(LcmEvent):
    operation: Operation
    resource: str | None = None
    seconds: float | None = None
    #: ``True``/``False`` when the LCM printed the test's result (consistency checks do).
    result: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationSkipped(LcmEvent):
    """``[ Skip   Set ]``: the resource tested in its desired state, so Set did not run."""

    operation: Operation
    resource: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodInvoked(LcmEvent):
    """``Perform operation 'Invoke CimMethod' with following parameters, ''methodName' = X, ...``"""

    method: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodCompleted(LcmEvent):
    """``Operation 'Invoke CimMethod' complete.``"""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCompleted(LcmEvent):
    """``Time taken for configuration job to complete is 1.379 seconds``"""

    seconds: float | None = None


Event: TypeAlias = (
    Message
    | ResourceMessage
    | LcmWarning
    | LcmError
    | RebootRequired
    | OperationStarted
    | OperationEnded
    | OperationSkipped
    | MethodInvoked
    | MethodCompleted
    | JobCompleted
)

# --- the line grammar ---------------------------------------------------------------------------

REBOOT_TEXT: Final = "A reboot is required to progress further"
_CONSOLE_PREFIX = re.compile(r"(VERBOSE|WARNING|DEBUG|ERROR|What if): ?(.*)", re.DOTALL)
# A log format some wrappers write: "[2017-10-09 13:12:21Z] [VERBOSE] [node]: ..."
_STAMPED_PREFIX = re.compile(r"\[[^\]]{4,40}\] \[(VERBOSE|WARNING|DEBUG|ERROR)\] ?(.*)", re.DOTALL)
_NODE = re.compile(r"\[([^\]\[]*)\]: ?(.*)", re.DOTALL)
_LCM = re.compile(r"LCM:\s+\[\s*(Start|End|Skip)\s+(\w+)\s*\]\s*(.*)", re.DOTALL | re.IGNORECASE)
_NUMBER = r"([0-9]+(?:[.,][0-9]+)?)"
_TAIL = re.compile(
    r"(?:(True|False)\s+)?in\s+" + _NUMBER + r"\s*sec\w*\.*\s*", re.IGNORECASE
)
_METHOD = re.compile(r"Perform operation '[^']*' with (?:the )?following parameters.*?'methodName' = (\w+)")
_METHOD_DONE = re.compile(r"Operation '[^']*' complete\.?\s*")
_TIME_TAKEN = re.compile(r"Time taken for configuration job to complete is " + _NUMBER + r" seconds?\.?\s*")
_BRACKET_START = re.compile(r"\[[^\]\[]{1,60}\] ")
_PROMPT = re.compile(r"PS [^>]{0,200}> ?")
_DETAIL = re.compile(r"\s{2,}\+ (\w+)\s*: ?(.*)")
_STREAMS = {
    "VERBOSE": LineStream.VERBOSE,
    "WARNING": LineStream.WARNING,
    "DEBUG": LineStream.DEBUG,
    "ERROR": LineStream.ERROR,
    "What if": LineStream.WHATIF,
}
# Unprefixed lines that still start a record of their own (a job's bare .Verbose collection).
_BARE_STARTS = ("Perform operation ", "Operation '", "An LCM method call ", "Time taken for configuration")
#: A console line this long may have been wrapped; a shorter one ended its record.
WRAP_MIN: Final = 60


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text.replace(",", "."))
    except ValueError:
        return None


def _bracketed(text: str) -> tuple[str, str] | None:
    """``[a [b] c] rest`` -> ("a [b] c", "rest"): the outermost balanced brackets at the start."""
    if not text.startswith("["):
        return None
    depth = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return text[1:i], text[i + 1 :].lstrip(" ")
    return None


def _is_resource_id(scope: str) -> bool:
    return bool(re.match(r"\[[^\]\[]+\]\S", scope))


def _lcm_line(body: str, text: str, node: str | None, stream: LineStream) -> Event | None:
    m = _LCM.match(body)
    if m is None:
        return None
    verb, op = m[1].capitalize(), Operation.parse(m[2])
    rest = m[3].strip()
    resource: str | None = None
    if rest.startswith("["):
        inner = _bracketed(rest)
        if inner is None:
            return None
        resource, rest = inner
    seconds: float | None = None
    result: bool | None = None
    if rest:
        tail = _TAIL.fullmatch(rest)
        if tail is None:
            return None
        result = None if tail[1] is None else tail[1].casefold() == "true"
        seconds = _seconds(tail[2])
    common: dict[str, Any] = {"text": text, "node": node, "stream": stream}
    if verb == "Start":
        return OperationStarted(**common, operation=op, resource=resource)
    if verb == "Skip":
        return OperationSkipped(**common, operation=op, resource=resource)
    return OperationEnded(**common, operation=op, resource=resource, seconds=seconds, result=result)


def classify_line(text: str, stream: LineStream = LineStream.VERBOSE) -> Event:
    """One logical line (no console prefix) as an event. Never raises."""
    common: dict[str, Any] = {"text": text, "stream": stream}
    body = text.strip()
    if stream is LineStream.ERROR:
        return LcmError(**common, message=body)
    node: str | None = None
    m = _NODE.match(body)
    if m is not None and not body.startswith("[["):
        node, body = m[1], m[2]
        common["node"] = node
        lcm = _lcm_line(body, text, node, stream)
        if lcm is not None:
            return lcm
        body = body.strip()
    if REBOOT_TEXT.casefold() in body.casefold():
        return RebootRequired(**common)
    scope: str | None = None
    if node is not None:
        inner = _bracketed(body)
        if inner is not None:
            scope, message = inner
            if _is_resource_id(scope):
                if stream is LineStream.WARNING:
                    return LcmWarning(**common, message=message, resource=scope)
                return ResourceMessage(**common, resource=scope, message=message)
            body = message
    if stream is LineStream.WARNING:
        return LcmWarning(**common, message=body)
    if (mm := _METHOD.match(body)) is not None:
        return MethodInvoked(**common, method=mm[1])
    if _METHOD_DONE.fullmatch(body):
        return MethodCompleted(**common)
    if (tt := _TIME_TAKEN.fullmatch(body)) is not None:
        return JobCompleted(**common, seconds=_seconds(tt[1]))
    return Message(**common, scope=scope)


def _complete(text: str, stream: LineStream) -> bool:
    """Whether a record already parses as a whole LCM line, so a short line after it is not its tail."""
    return isinstance(
        classify_line(text, stream),
        OperationStarted | OperationEnded | OperationSkipped | JobCompleted | MethodCompleted,
    )


# --- the parser -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Logical:
    """A record being assembled from console lines."""

    stream: LineStream
    prefixed: bool
    parts: list[str]
    last: str
    details: dict[str, str] = field(default_factory=dict)
    last_detail: str | None = None
    #: Indices in ``parts`` where a wrapped console line was joined on.
    joins: list[int] = field(default_factory=list)

    def join(self, line: str) -> None:
        prev = self.last.strip()
        # A word longer than the console is hard-split; ordinary wrapping breaks at a space.
        sep = "" if " " not in prev and len(prev) >= WRAP_MIN else " "
        self.joins.append(len(self.parts))
        self.parts.append(sep + line.strip())
        self.last = line

    def split_error(self) -> _Logical | None:
        """Error details follow: the unprefixed lines after the record's first full sentence were
        the error's message, not a wrapped tail of the record. Returns the error, or None."""
        for index in self.joins:
            if "".join(self.parts[:index]).rstrip().endswith("."):
                error = _Logical(LineStream.ERROR, False, [self.parts[index].strip(), *self.parts[index + 1 :]], "")
                del self.parts[index:]
                self.joins = [j for j in self.joins if j < index]
                return error
        return None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class LcmParser:
    """Feed records or console lines; take events out with :meth:`next_event`."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._current: _Logical | None = None
        self.lines = 0

    # ---- input ---------------------------------------------------------------------------
    def receive_record(self, stream: LineStream | str, message: str) -> None:
        """A whole record as it came over PSRP (never wrapped)."""
        self._finish()
        self.lines += 1
        try:
            kind = LineStream(stream)
        except ValueError:
            kind = LineStream.PLAIN
        for event in self._events_of(message, kind):
            self._events.append(event)

    def receive_line(self, line: str) -> None:
        """One physical line of a console transcript."""
        self.lines += 1
        line = line.rstrip("\r\n")
        current = self._current
        if not line.strip():
            self._finish()
            return
        detail = _DETAIL.fullmatch(line)
        if detail is not None:
            if current is None or (current.prefixed and not current.details):
                error = current.split_error() if current is not None else None
                if current is not None:
                    self._finish()
                # Details with no unprefixed message before them make an error of their own.
                current = self._current = error or _Logical(LineStream.ERROR, False, [], "")
            current.details[detail[1]] = detail[2].strip()
            current.last_detail = detail[1]
            current.last = line
            return
        if current is not None and current.last_detail is not None and line.startswith("   "):
            # A wrapped detail value (a long FullyQualifiedErrorId is hard-split).
            key = current.last_detail
            current.details[key] = current.details[key] + line.strip()
            return
        start = self._record_start(line)
        if start is not None:
            self._finish()
            stream, body = start
            self._current = _Logical(stream, True, [body], line)
            return
        if (
            current is not None
            and not current.details
            and len(current.last) >= WRAP_MIN
            and not (current.prefixed and _complete(current.text, current.stream))
        ):
            current.join(line)
            return
        self._finish()
        self._current = _Logical(LineStream.PLAIN, False, [line.strip()], line)

    def close(self) -> None:
        """End of input: what was being assembled comes out."""
        self._finish()

    # ---- output --------------------------------------------------------------------------
    def next_event(self) -> Event | NeedData:
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def events(self) -> Iterator[Event]:
        """Every event available now."""
        while self._events:
            yield self._events.popleft()

    # ---- internals -----------------------------------------------------------------------
    @staticmethod
    def _record_start(line: str) -> tuple[LineStream, str] | None:
        m = _CONSOLE_PREFIX.match(line) or _STAMPED_PREFIX.match(line)
        if m is not None:
            return _STREAMS.get(m[1], LineStream.PLAIN), m[2]
        if _NODE.match(line) is not None or line.startswith(_BARE_STARTS):
            return LineStream.VERBOSE, line
        if _BRACKET_START.match(line) is not None or _PROMPT.match(line) is not None:
            # "[timestamp] something": a log line of its own, never the tail of a wrapped one.
            return LineStream.PLAIN, line
        return None

    def _finish(self) -> None:
        current = self._current
        self._current = None
        if current is None:
            return
        if current.details:
            text = current.text.strip()
            self._events.append(
                LcmError(
                    text=text,
                    stream=LineStream.ERROR,
                    message=text,
                    fqid=current.details.get("FullyQualifiedErrorId"),
                    category=current.details.get("CategoryInfo"),
                )
            )
            return
        if not current.prefixed:
            self._events.append(Message(text=current.text, stream=LineStream.PLAIN))
            return
        self._events.extend(self._events_of(current.text, current.stream))

    @staticmethod
    def _events_of(message: str, stream: LineStream) -> list[Event]:
        try:
            return [classify_line(message, stream)]
        except Exception:  # pragma: no cover - a bug must not lose the line
            return [Message(text=message, stream=stream)]


def parse_transcript(lines: Iterable[str]) -> list[Event]:
    """Every event of a console transcript, in order."""
    parser = LcmParser()
    out: list[Event] = []
    for line in lines:
        parser.receive_line(line)
        out.extend(parser.events())
    parser.close()
    out.extend(parser.events())
    return out


__all__ = [
    "NEED_DATA",
    "REBOOT_TEXT",
    "Event",
    "JobCompleted",
    "LcmError",
    "LcmEvent",
    "LcmParser",
    "LcmWarning",
    "LineStream",
    "Message",
    "MethodCompleted",
    "MethodInvoked",
    "NeedData",
    "Operation",
    "OperationEnded",
    "OperationSkipped",
    "OperationStarted",
    "RebootRequired",
    "ResourceMessage",
    "classify_line",
    "parse_transcript",
]
