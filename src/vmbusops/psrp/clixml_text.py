"""CLIXML text and primitive values, decoded exactly as psrpcore decodes them.

The pieces both tiers of :mod:`.decode` share: ``_xHHHH_`` unescaping (for what the client
receives, a surrogate without its pair made U+FFFD, as :mod:`.convert` does on psrpcore's path:
:func:`guest_text`), the check that a text slot a regular expression captured is plain character data, and the primitive elements
(``S``, ``I32``, ``DT``, ...) with the ranges and formats psrpcore accepts. Anything not decoded
exactly raises :class:`Fallback`, and the caller hands the message to psrpcore.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import re

from vmbusops.psrp.convert import offset_text, whole_text
from vmbusops.records import Value

__all__ = [
    "INT_RANGES",
    "NOT_PLAIN",
    "Fallback",
    "clixml_unescape",
    "datetime_text",
    "document_text",
    "guest_text",
    "int_text",
    "primitive_value",
    "slot_text",
]


class Fallback(Exception):
    """The message is not one the fast path decodes exactly; psrpcore must."""


# -- text ---------------------------------------------------------------------------------------

# CLIXML escapes a character as _xHHHH_ (UTF-16 code units). psrpcore decodes on the UTF-16-BE
# bytes of the string, so a match can also start in the middle of a character; that needs
# U+5F00 ('_' as a high byte), and with neither that nor '_x' present nothing can change.
_CLIXML_ESCAPE = re.compile(rb"\x00_\x00x((?:\x00[a-fA-F0-9]){4})\x00_")


def _unhex(m: re.Match[bytes]) -> bytes:
    return bytes.fromhex(m.group(1).decode("utf-16-be"))


def clixml_unescape(value: str) -> str:
    """Decode CLIXML ``_xHHHH_`` escapes exactly as psrpcore does: a UTF-16 code unit without its
    pair stays, as a lone surrogate (the simulator reads what a client sends so, as PowerShell
    keeps it in a .NET string)."""
    if "_x" not in value and "\u5f00" not in value:
        return value
    raw = _CLIXML_ESCAPE.sub(_unhex, value.encode("utf-16-be"))
    return raw.decode("utf-16-be", errors="surrogatepass")


def guest_text(value: str) -> str:
    """:func:`clixml_unescape` for what the client receives: a surrogate without its pair is
    U+FFFD (:func:`~.convert.whole_text`), as on psrpcore's path."""
    if "_x" not in value and "\u5f00" not in value:
        return value
    return whole_text(clixml_unescape(value))



# What a regex-matched text slot must not contain to be plain character data: characters XML
# forbids, CR (the parser would normalise it), ']]>', and any '&' that is not one of the five
# predefined entities (character references are left to the parser).
NOT_PLAIN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\r\ufffe\uffff]|]]>|&(?!(?:lt|gt|amp|quot|apos);)")


def slot_text(raw: str) -> str:
    """A regex-captured element text, XML- and CLIXML-decoded."""
    if NOT_PLAIN.search(raw) is not None:
        raise Fallback
    if "&" in raw:
        raw = (
            raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", '"')
            .replace("&apos;", "'")
            .replace("&amp;", "&")
        )
    return guest_text(raw)


def document_text(data: bytes) -> str:
    text = data.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


# -- primitives ---------------------------------------------------------------------------------

INT_RANGES = {
    "SB": (-(2**7), 2**7 - 1),
    "By": (0, 2**8 - 1),
    "I16": (-(2**15), 2**15 - 1),
    "U16": (0, 2**16 - 1),
    "I32": (-(2**31), 2**31 - 1),
    "U32": (0, 2**32 - 1),
    "I64": (-(2**63), 2**63 - 1),
    "U64": (0, 2**64 - 1),
}
_INTEGER = re.compile(r"-?[0-9]+")
_REAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,7}))?(Z|[+-][0-9]{2}:[0-9]{2})?"
)


def int_text(tag: str, text: str) -> int:
    low, high = INT_RANGES[tag]
    if _INTEGER.fullmatch(text) is None:
        raise Fallback
    value = int(text)
    if not low <= value <= high:
        raise Fallback
    return value


def datetime_text(text: str) -> str:
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise Fallback
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    # Validates the calendar exactly as psrpcore's strptime would (raises ValueError).
    datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    canonical = f"{text[:19]}.{(fraction or '').ljust(7, '0')}"
    if zone is None:
        return canonical
    if zone == "Z":
        return canonical + "Z"
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 23 or minutes > 59:
        raise Fallback
    total = hours * 60 + minutes
    return canonical + offset_text(-total if zone[0] == "-" else total)


def primitive_value(tag: str, text: str | None) -> Value:
    """A primitive element's value from its (XML-decoded) text; unknown tags fall back."""
    if tag == "S":
        return guest_text(text or "")
    if tag == "Nil":
        return None
    if tag == "B":
        return (text or "").lower() == "true"
    if tag in INT_RANGES:
        return int_text(tag, text or "")
    if tag in ("Db", "Sg"):
        if text is None or _REAL.fullmatch(text) is None:
            raise Fallback
        return float(text)
    if tag == "D":
        if text is None or _REAL.fullmatch(text) is None:
            raise Fallback
        return str(decimal.Decimal(text))
    if tag == "DT":
        return datetime_text(text or "")
    if tag == "G":
        if text is None or _GUID.fullmatch(text) is None:
            raise Fallback
        return text.lower()
    if tag == "C":
        code = int_text("U16", text or "")
        return whole_text(chr(code))
    if tag == "BA":
        return bytes(base64.b64decode(text or ""))
    raise Fallback
