"""The bundle archive: a strict subset of POSIX ustar, read and written by us.

Theory of operation. A ``.vmb`` file is an uncompressed tar archive whose first member is
``envelope.json`` and whose other members are exactly the manifest's files, each a regular file.
Any tar tool can list or unpack it, but we read it with this small reader instead of
:mod:`tarfile`, so that every byte of hostile input meets code that knows the rules:

* the first 512-byte block is checked for compression magic (gzip, bzip2, xz, zstd, zip) before
  anything else: we never decompress, so a compression bomb is refused unread;
* every header's checksum and ustar magic are checked; only types ``0`` (regular file) pass;
  links, devices, FIFOs, directories, pax / GNU extension headers and sparse files are refused by
  type, before their names matter;
* sizes are octal (base-256 "big" sizes are refused) and data is read in fixed chunks into one
  reusable buffer, so memory stays flat whatever the member size;
* the archive ends with two zero blocks; what follows may only be zero padding, up to a limit.

:func:`parse_header` works on one block of bytes; :class:`TarReader` is the thin I/O around it,
pulling from any binary stream. :class:`TarWriter` writes the same subset (mtime 0, uid/gid 0,
no user names) so builds are reproducible.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmbusops.bundle.errors import (
    CompressedBundleError,
    LimitExceededError,
    LinkMemberError,
    ManifestError,
    NotATarError,
    SpecialMemberError,
    TruncatedBundleError,
    UnsafePathError,
)
from vmbusops.bundle.member_paths import ENVELOPE_MEMBER, check_bundle_path
from vmbusops.guest_paths import reserved_name

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20

_COMPRESSION_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"\x5d\x00\x00", "lzma"),
)

_REBUILD = "do not run this file; rebuild the bundle with `vmbusops bundle build`"

_TYPE_NAMES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"x": "a pax extended header",
    b"g": "a pax global header",
    b"L": "a GNU long-name header",
    b"K": "a GNU long-link header",
    b"S": "a GNU sparse file",
}


@dataclass(frozen=True, slots=True)
class MemberHeader:
    name: str
    size: int
    typeflag: bytes
    linkname: str


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise NotATarError(
            f"{what} uses a base-256 number; bundles use plain ustar (members under 8 GiB)", hint=_REBUILD
        )
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise NotATarError(f"{what} is not an octal number", hint=_REBUILD)
    return int(text, 8)


def _text(field: bytes) -> str | None:
    try:
        return field.split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def compression_of(block: bytes) -> str | None:
    for magic, name in _COMPRESSION_MAGIC:
        if block.startswith(magic):
            return name
    return None


def parse_header(block: bytes) -> MemberHeader | None:
    """One 512-byte header block; None for a zero block (the end marker)."""
    if len(block) != BLOCK:
        raise TruncatedBundleError(
            "the archive ends inside a tar header", hint="the file is truncated; copy it again"
        )
    if block == bytes(BLOCK):
        return None
    try:
        stored: int | None = _octal(block[148:156], "a header checksum")
    except NotATarError:
        stored = None
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise NotATarError(
            "a tar header has a bad checksum: this is not a tar archive, or it is corrupt",
            hint="give a .vmb file written by `vmbusops bundle build`; copy it again if it was",
        )
    if block[257:263] not in (b"ustar\x00", b"ustar "):
        raise NotATarError(
            "a tar header lacks the ustar magic; bundles are POSIX ustar archives", hint=_REBUILD
        )
    name = _text(block[0:100])
    prefix = _text(block[345:500]) if block[257:263] == b"ustar\x00" else ""
    if name is None or prefix is None:
        raise UnsafePathError(
            "a member name is not valid UTF-8", hint=_REBUILD, member=repr(block[0:100].split(b"\x00")[0])
        )
    full = f"{prefix}/{name}" if prefix else name
    typeflag = block[156:157]
    return MemberHeader(
        name=full,
        size=_octal(block[124:136], f"the size of member {full!r}"),
        typeflag=typeflag,
        linkname=_text(block[157:257]) or "",
    )


def check_member(header: MemberHeader) -> None:
    """Refuse anything but a regular file with a plain relative name."""
    name = header.name
    if header.typeflag in (b"1", b"2"):
        raise LinkMemberError(
            f"member {name!r} is {_TYPE_NAMES[header.typeflag]} (to {header.linkname!r});"
            " bundles hold regular files only",
            hint="do not run this bundle; links in an archive can write outside the extraction folder",
            member=name,
        )
    if header.typeflag not in (b"0", b"\x00"):
        kind = _TYPE_NAMES.get(header.typeflag, f"of unknown tar type {header.typeflag!r}")
        raise SpecialMemberError(
            f"member {name!r} is {kind}; bundles hold regular files only",
            hint="rebuild the bundle with `vmbusops bundle build`",
            member=name,
        )
    if name == ENVELOPE_MEMBER:
        return  # its place (first, once) is the reader's business
    try:
        check_bundle_path(name, what="member")
    except ManifestError as exc:
        device = any(map(reserved_name, name.split("/")))
        why = "a Windows reserved device name" if device else "absolute, '..', or unusual characters"
        raise UnsafePathError(
            f"member {name!r} has an unsafe path ({why})",
            hint="do not run this bundle; rebuild it with `vmbusops bundle build`",
            member=name,
        ) from exc


class TarReader:
    """Pulls headers and data from a binary stream, one member at a time."""

    def __init__(self, stream: BinaryIO, *, chunk_size: int = CHUNK) -> None:
        self._stream = stream
        self._buffer = bytearray(chunk_size)
        self._view = memoryview(self._buffer)
        self._pending = 0  # data + padding bytes of the current member not yet read
        self._current: MemberHeader | None = None
        self._started = False
        self.offset = 0

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._stream.read(n)
        while len(data) < n:
            more = self._stream.read(n - len(data))
            if not more:
                raise TruncatedBundleError(
                    f"the archive ends inside {what}", hint="the file is truncated; copy it again"
                )
            data += more
        self.offset += n
        return data

    def next_member(self) -> MemberHeader | None:
        """The next member's header (checked by :func:`check_member` by the caller), or None at the end."""
        if self._pending:
            for _ in self.iter_data():
                pass
        first = self._stream.read(BLOCK)
        while 0 < len(first) < BLOCK:
            more = self._stream.read(BLOCK - len(first))
            if not more:
                break
            first += more
        if not self._started:
            self._started = True
            compression = compression_of(first)
            if compression is not None:
                raise CompressedBundleError(
                    f"the file is {compression}-compressed; bundles are uncompressed tar archives and"
                    " are never decompressed (a compressed archive can expand without bound)",
                    hint="pass the .vmb file exactly as `vmbusops bundle build` wrote it",
                )
            if len(first) < BLOCK:
                raise NotATarError(
                    f"the file is {len(first)} bytes, too short to be a tar archive",
                    hint="give a .vmb file written by `vmbusops bundle build`",
                )
        if not first:
            raise TruncatedBundleError(
                "the archive ends without its end marker", hint="the file is truncated; copy it again"
            )
        self.offset += len(first)
        header = parse_header(first)
        if header is None:
            second = self._read_exact(BLOCK, "the end marker")
            if second != bytes(BLOCK):
                raise NotATarError("a zero block inside the archive is followed by data", hint=_REBUILD)
            self._current = None
            return None
        self._current = header
        self._pending = header.size + (-header.size) % BLOCK
        return header

    def iter_data(self) -> Iterator[memoryview]:
        """The current member's data in chunks (views into one reused buffer; copy to keep)."""
        header = self._current
        assert header is not None
        remaining = header.size
        while remaining:
            want = min(remaining, len(self._buffer))
            got = self._stream.readinto(self._view[:want])  # type: ignore[attr-defined]
            if not got:
                raise TruncatedBundleError(
                    f"the archive ends inside member {header.name!r}",
                    hint="the file is truncated; copy it again",
                    member=header.name,
                )
            remaining -= got
            self._pending -= got
            self.offset += got
            yield self._view[:got]
        if self._pending:
            pad = self._read_exact(self._pending, f"the padding of member {header.name!r}")
            self._pending = 0
            if pad.count(0) != len(pad):
                raise NotATarError(f"the padding after member {header.name!r} is not zero", hint=_REBUILD)

    def read_member(self, limit: int) -> bytes:
        """The current member's data whole, for small members only (the envelope)."""
        header = self._current
        assert header is not None
        assert header.size <= limit
        return b"".join(bytes(chunk) for chunk in self.iter_data())

    def check_trailer(self, max_bytes: int) -> None:
        """After the end marker: only zero padding, at most ``max_bytes`` of it."""
        seen = 0
        while True:
            got = self._stream.readinto(self._view)  # type: ignore[attr-defined]
            if not got:
                return
            seen += got
            if seen > max_bytes:
                raise LimitExceededError(
                    f"more than {max_bytes} bytes follow the archive's end marker",
                    hint="do not run this bundle; rebuild it with `vmbusops bundle build`",
                    member="(after end of archive)",
                )
            if self._view[:got].tobytes().count(0) != got:
                raise LimitExceededError(
                    "data follows the archive's end marker",
                    hint="do not run this bundle; rebuild it with `vmbusops bundle build`",
                    member="(after end of archive)",
                )


def ustar_header(name: str, size: int, *, mode: int = 0o644) -> bytes:
    raw = name.encode("utf-8")
    prefix = b""
    if len(raw) > 100:
        cuts = [i for i, c in enumerate(raw) if c == 0x2F and i <= 155 and len(raw) - i - 1 <= 100]
        if not cuts:
            raise ValueError(f"path {name!r} is too long for a ustar header")
        prefix, raw = raw[: cuts[0]], raw[cuts[0] + 1 :]
    block = bytearray(BLOCK)
    block[0 : len(raw)] = raw
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"00000000000\x00"
    block[148:156] = b" " * 8
    block[156:157] = b"0"
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[329:337] = b"0000000\x00"
    block[337:345] = b"0000000\x00"
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


class TarWriter:
    """Writes regular-file members and the end marker, padding the archive to whole records."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.offset = 0

    def _write(self, data: bytes | memoryview) -> None:
        self._stream.write(data)
        self.offset += len(data)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._write(ustar_header(name, len(data)))
        self._write(data)
        self._write(bytes((-len(data)) % BLOCK))

    def add_file(self, name: str, path: Path, size: int) -> None:
        self._write(ustar_header(name, size))
        with path.open("rb") as src:
            copied = 0
            while chunk := src.read(CHUNK):
                copied += len(chunk)
                if copied > size:
                    break
                self._write(chunk)
        if copied != size:
            raise OSError(f"{path} changed size while being added to the bundle")
        self._write(bytes((-size) % BLOCK))

    def copy_raw(self, src: BinaryIO) -> None:
        """Copy already-framed members (and the end marker) verbatim from ``src``."""
        before = self._stream.tell()
        shutil.copyfileobj(src, self._stream, CHUNK)
        self.offset += self._stream.tell() - before

    def close(self) -> None:
        self._write(bytes(2 * BLOCK))
        self._write(bytes((-self.offset) % RECORD))
        self._stream.flush()
        with contextlib.suppress(OSError, io.UnsupportedOperation):
            os.fsync(self._stream.fileno())
