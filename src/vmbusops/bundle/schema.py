"""Field-driven conversion between the manifest's frozen dataclasses and their JSON objects.

Theory of operation. A :class:`JsonRecord` dataclass is one JSON object; each dataclass field is
one member of the same name. Writing (:meth:`JsonRecord.to_dict`) emits the fields in declaration
order and leaves out a field whose value is ``None``; that order is part of the signed bytes, so
reordering fields changes every bundle id and signature. Reading (:meth:`JsonRecord.from_dict`)
takes the fields out of the object in declaration order, so the first mistake reported is the
first one in that order, then refuses whatever is left (an unknown field), builds the record, and
runs :meth:`JsonRecord.validate` for rules that span fields.

How a field is read follows from its annotation, and its default from the dataclass default (no
default: the field is required; ``null`` counts as absent):

=======================  ===========================================================
``bool``                 ``true`` or ``false``
``str`` / ``str | None``  a non-empty string
``tuple[str, ...]``      a list of non-empty strings
a ``StrEnum``            one of its values
``datetime``             an RFC 3339 time with a zone (written in UTC, ``Z``)
a ``JsonRecord``         a nested object, read by that record's own fields
=======================  ===========================================================

Anything else (numbers, which always have a range; patterns; bundle and guest paths; a default that depends
on an earlier field) carries a :class:`Spec` in the field's metadata: ``field(metadata=...)`` with
one of the helpers below (:func:`text`, :func:`integer`, :func:`seconds`, :func:`number`,
:func:`bundle_path`, :func:`bundle_paths`, :func:`guest_path`) or a :class:`Spec` with its own ``read``. A spec's
``read`` sees the fields read before it (``known``), plus whatever the caller put in ``context``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self, TypeAlias, get_type_hints

from vmbusops.bundle.errors import ManifestError, UnknownFieldError
from vmbusops.bundle.member_paths import check_bundle_path
from vmbusops.guest_paths import EXAMPLE, guest_path_problem


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()
"""The ``default`` a spec's ``read`` gets for a field the dataclass gives no default."""

BundleRef: TypeAlias = Literal["file", "folder"]
"""What a bundle-path field names: one bundle file, or a folder whose every file is used."""


class FieldReader:
    """Takes fields out of one JSON object; whatever is left at :meth:`done` is an unknown field."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where} must be an object")
        self._obj: dict[str, Any] = dict(obj)
        self.where = where

    def take(self, key: str, default: object) -> Any:
        """The raw value, or ``None`` when absent or ``null``; absence of a required field is an error."""
        if key not in self._obj:
            if default is REQUIRED:
                raise ManifestError(f"{self.where} lacks the required field {key!r}")
            return None
        return self._obj.pop(key)

    def bad(self, key: str, want: str) -> ManifestError:
        return ManifestError(f"{self.where}.{key} must be {want}")

    def text(self, key: str, default: object, pattern: re.Pattern[str] | None = None) -> Any:
        v = self.take(key, default)
        if v is None and default is not REQUIRED:
            return default
        if not isinstance(v, str) or not v or (pattern is not None and not pattern.fullmatch(v)):
            raise self.bad(key, "a non-empty string" + (f" matching {pattern.pattern}" if pattern else ""))
        return v

    def integer(self, key: str, default: object, minimum: int, maximum: int) -> Any:
        v = self.take(key, default)
        if v is None and default is not REQUIRED:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            raise self.bad(key, f"an integer from {minimum} to {maximum}")
        return v

    def number(self, key: str, default: object, minimum: float, maximum: float, want: str) -> Any:
        v = self.take(key, default)
        if v is None and default is not REQUIRED:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or not minimum <= v <= maximum:
            raise self.bad(key, want)
        return float(v)

    def flag(self, key: str, default: object) -> Any:
        v = self.take(key, default)
        if v is None and default is not REQUIRED:
            return default
        if not isinstance(v, bool):
            raise self.bad(key, "true or false")
        return v

    def texts(
        self, key: str, default: object, pattern: re.Pattern[str] | None = None, max_items: int = 1024
    ) -> tuple[str, ...]:
        v = self.take(key, default)
        if v is None:
            return ()
        if not isinstance(v, list) or len(v) > max_items:
            raise self.bad(key, f"a list of at most {max_items} strings")
        for item in v:
            if not isinstance(item, str) or not item or (pattern is not None and not pattern.fullmatch(item)):
                raise self.bad(
                    key, "a list of non-empty strings" + (" (allowed characters only)" if pattern else "")
                )
        return tuple(v)

    def choice(self, key: str, default: object, cls: type[enum.StrEnum]) -> Any:
        v = self.take(key, default)
        if v is None and default is not REQUIRED:
            return default
        try:
            return cls(v)
        except ValueError:
            raise self.bad(key, "one of " + ", ".join(m.value for m in cls)) from None

    def done(self) -> None:
        if self._obj:
            names = ", ".join(repr(k) for k in sorted(self._obj))
            raise UnknownFieldError(
                f"{self.where} has unknown field(s) {names}",
                hint="fix the field name in bundle.toml, or upgrade vmbusops on this host",
            )


Read: TypeAlias = Callable[[FieldReader, str, Any, Mapping[str, Any]], Any]
"""``read(reader, key, default, known)``: take field ``key`` out of ``reader`` and return its value;
``default`` is the dataclass default or :data:`REQUIRED`; ``known`` holds the fields read before."""


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """How one field is read and written when its annotation does not say enough."""

    read: Read
    write: Callable[[Any], Any] | None = None  # default: by the value's type (see module docstring)
    names: BundleRef | None = None  # the field holds bundle paths a step needs (see JsonRecord.bundle_refs)


def spec(read: Read, *, write: Callable[[Any], Any] | None = None, names: BundleRef | None = None) -> Any:
    """Field metadata: ``field(metadata=spec(read))``."""
    return {"spec": Spec(read, write, names)}


def text(pattern: re.Pattern[str] | None = None) -> Any:
    return spec(lambda r, key, default, known: r.text(key, default, pattern))


def integer(minimum: int, maximum: int) -> Any:
    return spec(lambda r, key, default, known: r.integer(key, default, minimum, maximum))


def number(minimum: int, maximum: int) -> Any:
    """A number in a range; ``minimum`` and ``maximum`` appear in the error message as given."""
    want = f"a number from {minimum} to {maximum}"
    return spec(lambda r, key, default, known: r.number(key, default, minimum, maximum, want))


def seconds() -> Any:
    """A duration in seconds, up to one year."""
    want = "a number of seconds from 0 to one year"
    return spec(lambda r, key, default, known: r.number(key, default, 0, 366 * 86400, want))


def bundle_path(names: BundleRef | None = None) -> Any:
    """A string that is a plain relative path inside the bundle (see :func:`check_bundle_path`)."""

    def read(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> Any:
        value = r.text(key, default)
        if value is not None:
            check_bundle_path(value, what=f"{r.where}.{key}")
        return value

    return spec(read, names=names)


def guest_path() -> Any:
    """A path in the guest (see :func:`vmbusops.guest_paths.guest_path_problem`); the message
    names the step, when the record has a name, and the rule the path broke."""

    def read(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> Any:
        value = r.text(key, default)
        problem = None if value is None else guest_path_problem(value)
        if problem is not None:
            name = f" ({known['name']!r})" if isinstance(known.get("name"), str) else ""
            raise ManifestError(
                f"{r.where}{name}.{key} {value!r} {problem}",
                hint=f"use an absolute Windows path such as {EXAMPLE}",
            )
        return value

    return spec(read)


def bundle_paths(names: BundleRef, *, at_least_one: str | None = None) -> Any:
    """A list of bundle paths; ``at_least_one`` (what to call an item) refuses an empty list."""

    def read(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> Any:
        paths = r.texts(key, default)
        if at_least_one is not None and not paths:
            raise ManifestError(f"{r.where}.{key} must name at least one {at_least_one}")
        for p in paths:
            check_bundle_path(p, what=f"{r.where} path")
        return paths

    return spec(read, names=names)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise ManifestError(f"{where} must be an RFC 3339 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ManifestError(f"{where} {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ManifestError(f"{where} {value!r} has no time zone; use UTC ('Z')")
    return parsed.astimezone(UTC)


class JsonRecord:
    """Base of the manifest's dataclasses: converted to and from JSON field by field."""

    __slots__ = ()

    def validate(self, where: str) -> None:
        """Rules across fields, checked once every field is read; none unless a record says so."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f, field_spec in _specs(type(self)):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = field_spec.write(value) if field_spec.write else _to_json(value)
        return out

    @classmethod
    def from_dict(cls, value: object, where: str, context: Mapping[str, Any] | None = None) -> Self:
        return cls.read_from(FieldReader(value, where), context or {})

    @classmethod
    def read_from(cls, reader: FieldReader, context: Mapping[str, Any]) -> Self:
        """Every field out of ``reader`` (which must then be empty), then :meth:`validate`."""
        known: dict[str, Any] = dict(context)
        values: dict[str, Any] = {}
        for f, field_spec in _specs(cls):
            values[f.name] = known[f.name] = field_spec.read(reader, f.name, _default(f), known)
        reader.done()
        make: Callable[..., Self] = cls
        record = make(**values)
        record.validate(reader.where)
        return record

    def bundle_refs(self, names: BundleRef) -> tuple[str, ...]:
        """The bundle paths this record's fields name as ``names`` (files, or folders), in field order."""
        out: list[str] = []
        for f, field_spec in _specs(type(self)):
            if field_spec.names == names:
                value = getattr(self, f.name)
                out.extend(value if isinstance(value, tuple) else () if value is None else (value,))
        return tuple(out)

    @classmethod
    def bundle_ref_fields(cls) -> Iterator[tuple[str, bool]]:
        """``(name, is_list)`` for each field that names bundle paths."""
        hints = get_type_hints(cls)
        for f, field_spec in _specs(cls):
            if field_spec.names is not None:
                yield f.name, hints[f.name] == tuple[str, ...]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def _to_json(value: object) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, datetime):
        return format_time(value)
    return value


_FieldSpecs: TypeAlias = tuple[tuple[dataclasses.Field[Any], Spec], ...]
_SPECS: dict[type[JsonRecord], _FieldSpecs] = {}


def _specs(cls: type[JsonRecord]) -> _FieldSpecs:
    """Each field with its spec, given or inferred; worked out once per class."""
    specs = _SPECS.get(cls)
    if specs is None:
        hints = get_type_hints(cls)
        specs = _SPECS[cls] = tuple(
            (f, f.metadata.get("spec") or _inferred(hints[f.name], f"{cls.__name__}.{f.name}"))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]  # every JsonRecord is a dataclass
        )
    return specs


def _inferred(hint: Any, name: str) -> Spec:
    if hint is bool:
        return Spec(lambda r, key, default, known: r.flag(key, default))
    if hint is str or hint == str | None:
        return Spec(lambda r, key, default, known: r.text(key, default))
    if hint == tuple[str, ...]:
        return Spec(lambda r, key, default, known: r.texts(key, default))
    if hint is datetime:
        return Spec(lambda r, key, default, known: parse_time(r.take(key, default), f"{r.where}.{key}"))
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        enum_type = hint
        return Spec(lambda r, key, default, known: r.choice(key, default, enum_type))
    record = _record_type(hint)
    if record is not None:

        def read(r: FieldReader, key: str, default: object, known: Mapping[str, Any]) -> Any:
            value = r.take(key, default)
            if value is None and default is not REQUIRED:
                return default
            return record.from_dict(value, f"{r.where}.{key}")

        return Spec(read)
    raise TypeError(f"{name}: no conversion for {hint!r}; give the field a spec")


def _record_type(hint: Any) -> type[JsonRecord] | None:
    """``R`` for an annotation ``R`` or ``R | None`` where ``R`` is a :class:`JsonRecord`."""
    if isinstance(hint, types.UnionType):
        args = [a for a in hint.__args__ if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if isinstance(hint, type) and issubclass(hint, JsonRecord) else None
