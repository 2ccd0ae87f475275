"""A forward-only reader of tar streams that hands out file data without copying it.

Plain Python, no Airflow import. ``tarfile``'s stream mode (``r|``) re-slices its whole read
buffer for every header and every read, which costs more than the hashing and writing when a cart
holds thousands of small files. This reader keeps the chunk it got from the stream and hands out
``memoryview`` slices of it. The plain POSIX headers Cartd writes (a PAX header and a file header
per member) are decoded here, which is four times cheaper; any other header goes to
``tarfile.TarInfo.frombuf`` (GNU formats, base-256 sizes, bad checksums and their errors). The
extended headers (PAX) and GNU long names are applied here. Anything else in the header area is
refused, never guessed at.
"""

from __future__ import annotations

import re
import tarfile
from typing import TYPE_CHECKING, Protocol

from airflow_provider_pacifica.exceptions import StreamError, UnsafeMemberError

if TYPE_CHECKING:
    from collections.abc import Iterator

BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)
_POSIX_MAGIC = tarfile.POSIX_MAGIC  # "ustar\x0000": the format Python's tarfile writes for PAX and ustar
_PLAIN_TYPES = {tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.XHDTYPE}
# An extended header holds a name or a size; a larger one is an attack on memory, not a cart.
MAX_EXTENDED_HEADER = 1 << 20
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_EXTENDED_TYPES = {
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
}


class Readable(Protocol):
    """What the reader needs of a stream: ``read(size)`` returning ``b""`` at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


class TarStreamReader:
    """Iterate the members of a tar read once from ``stream``; :meth:`data` yields the current file.

    :param stream: read sequentially with ``read(chunk_size)``; any chunk size it returns is fine.
    :param chunk_size: how much to ask the stream for at a time.
    :param encoding: how names in plain headers are decoded (PAX names are always UTF-8).

    Members are ``tarfile.TarInfo`` objects; only regular files carry data. Data the caller does
    not read is skipped when the iteration moves on. The iteration ends at the end-of-archive
    block, or where the stream ends exactly between members (as ``tarfile`` does); a stream that
    ends inside a header or inside a file raises :class:`StreamError`.
    """

    def __init__(self, stream: Readable, chunk_size: int = 1 << 20, encoding: str = "utf-8") -> None:
        self._stream = stream
        self._chunk_size = chunk_size
        self._encoding = encoding
        self._chunk = memoryview(b"")
        self._pos = 0
        self.offset = 0  # bytes consumed from the stream, for error messages
        self._unread = 0  # data (with padding) of the current member not yet consumed
        self._data_left = 0  # data of the current member that data() may still yield
        self._global_pax: dict[str, str] = {}

    # -- bytes ------------------------------------------------------------------------------

    def _take(self, size: int) -> memoryview:
        """Up to ``size`` bytes from the current chunk (a new chunk when it is used up); empty at the end."""
        if self._pos == len(self._chunk):
            self._chunk = memoryview(self._stream.read(self._chunk_size))
            self._pos = 0
            if not self._chunk:
                return self._chunk
        end = min(self._pos + size, len(self._chunk))
        view = self._chunk[self._pos : end]
        self._pos = end
        self.offset += len(view)
        return view

    def _read_exact(self, size: int, what: str) -> bytes:
        parts = []
        missing = size
        while missing:
            view = self._take(missing)
            if not view:
                raise StreamError(f"the cart stream is truncated: it ended inside {what} at byte {self.offset}")
            parts.append(view)
            missing -= len(view)
        return b"".join(parts)

    def _skip(self, size: int) -> None:
        while size:
            view = self._take(size)
            if not view:
                raise StreamError(f"the cart stream is truncated: it ended inside a member at byte {self.offset}")
            size -= len(view)

    # -- members ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while True:
            self._skip(self._unread)
            self._unread = self._data_left = 0
            member = self._next_member()
            if member is None:
                return
            if member.isreg():  # like tarfile: only regular files (and unknown types) carry data
                self._data_left = member.size
                self._unread = member.size + (-member.size % BLOCK)
            yield member

    def data(self) -> Iterator[memoryview]:
        """The current file's data, in slices of the stream's chunks (valid until the next read)."""
        while self._data_left:
            view = self._take(self._data_left)
            if not view:
                raise StreamError(
                    f"the cart stream is truncated: it ended inside a file, {self._data_left} bytes short"
                )
            self._data_left -= len(view)
            self._unread -= len(view)
            yield view

    def _header(self) -> tarfile.TarInfo | None:
        first = self._take(BLOCK)
        if not first:
            if self.offset == 0:
                raise StreamError("the cart stream is not a tar: empty file")
            return None  # ended between members
        block = bytes(first) if len(first) == BLOCK else bytes(first) + self._read_exact(BLOCK - len(first), "a header")
        if block == _ZERO_BLOCK:  # the end-of-archive marker
            return None
        plain = _plain_header(block, self._encoding)
        if plain is not None:
            return plain
        try:
            return tarfile.TarInfo.frombuf(block, self._encoding, "surrogateescape")
        except tarfile.HeaderError as err:
            kind = "not a tar" if self.offset == BLOCK else "corrupt"
            raise StreamError(f"the cart stream is {kind}: {err} at byte {self.offset - BLOCK}") from None

    def _next_member(self) -> tarfile.TarInfo | None:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            header = self._header()
            if header is None:
                if pax or long_name is not None or long_link is not None:
                    raise StreamError("the cart stream is truncated: it ended after an extended header")
                return None
            if header.type not in _EXTENDED_TYPES:
                break
            if not 0 <= header.size <= MAX_EXTENDED_HEADER:
                raise UnsafeMemberError(f"tar extended header of {header.size} bytes (at most {MAX_EXTENDED_HEADER})")
            data = self._read_exact(header.size, "an extended header")
            self._skip(-header.size % BLOCK)
            if header.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode(self._encoding, "surrogateescape")
            elif header.type == tarfile.GNUTYPE_LONGLINK:
                long_link = data.split(b"\0", 1)[0].decode(self._encoding, "surrogateescape")
            elif header.type == tarfile.XGLTYPE:
                self._global_pax.update(_parse_pax(data))
            else:
                pax.update(_parse_pax(data))
        member = self._apply(header, {**self._global_pax, **pax}, long_name, long_link)
        if member.size < 0:  # a base-256 size field can be negative
            raise UnsafeMemberError(f"tar member {member.name!r} has a negative size")
        return member

    @staticmethod
    def _apply(
        header: tarfile.TarInfo, pax: dict[str, str], long_name: str | None, long_link: str | None
    ) -> tarfile.TarInfo:
        if long_name is not None:
            header.name = long_name
        if long_link is not None:
            header.linkname = long_link
        if any(key.startswith("GNU.sparse") for key in pax):
            header.type = tarfile.GNUTYPE_SPARSE  # refused by the caller like any sparse member
        if "path" in pax:
            header.name = pax["path"].rstrip("/")  # as tarfile reads it
        if "linkpath" in pax:
            header.linkname = pax["linkpath"]
        if "size" in pax:
            try:
                header.size = int(pax["size"])
            except ValueError:
                raise UnsafeMemberError(f"tar member {header.name!r} has a PAX size {pax['size']!r}") from None
            if header.size < 0:
                raise UnsafeMemberError(f"tar member {header.name!r} has a negative size")
        if header.type == tarfile.AREGTYPE and header.name.endswith("/"):
            header.type = tarfile.DIRTYPE
        if header.isdir():
            header.name = header.name.rstrip("/")
        return header


def _plain_header(block: bytes, encoding: str) -> tarfile.TarInfo | None:
    """A POSIX ustar header of a file, directory or PAX record, decoded as ``frombuf`` would; else None."""
    kind = block[156:157]
    if block[257:265] != _POSIX_MAGIC or kind not in _PLAIN_TYPES or block[124] & 0x80:
        return None
    try:
        checksum = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if checksum != sum(block) - sum(block[148:156]) + 256:  # the field counts as eight spaces
        return None
    name = block[:100].split(b"\0", 1)[0].decode(encoding, "surrogateescape")
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    if prefix := block[345:500].split(b"\0", 1)[0]:
        name = prefix.decode(encoding, "surrogateescape") + "/" + name
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info


def _parse_pax(data: bytes) -> dict[str, str]:
    """The records of a PAX extended header (``"<length> <key>=<value>\\n"`` each)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_RECORD.match(data, pos)
        if match is None:
            raise UnsafeMemberError(f"malformed PAX header record at offset {pos}")
        length = int(match.group(1))
        end = pos + length
        if length < len(match.group(0)) + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise UnsafeMemberError(f"malformed PAX header record at offset {pos}")
        # UTF-8 with surrogateescape keeps even a hdrcharset=BINARY name byte for byte
        key = match.group(2).decode("utf-8", "surrogateescape")
        records[key] = data[match.end() : end - 1].decode("utf-8", "surrogateescape")
        pos = end
    return records
