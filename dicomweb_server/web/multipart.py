"""Streaming multipart/related (RFC 2046, RFC 2387) reader and writer, and media type parsing."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from dicomweb_server.errors import MalformedRequestError, PayloadTooLargeError
from dicomweb_server.services.spool import Spool

__all__ = [
    "MultipartPart",
    "iter_multipart",
    "iter_parts",
    "multipart_content_type",
    "multipart_framing",
    "new_boundary",
    "parse_media_type",
]

# RFC 9110 5.6.2 token, 5.6.4 quoted-string (qdtext and quoted-pair).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN_RE = re.compile(_TOKEN)
# Parameter values may also be unquoted media types (`type=application/dicom`): RFC 9110 wants
# them quoted, but common DICOMweb clients do not, and PS3.18 examples show both.
_PARAM_VALUE = r"[!#$%&'*+.^_`|~0-9A-Za-z/-]+"
_MEDIA_TYPE_RE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
_PARAM_RE = re.compile(
    rf"""
    ;[ \t]*
    (?:
        ({_TOKEN})[ \t]*=[ \t]*
        (?: ({_PARAM_VALUE}) | "((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*)" )
    )?
    [ \t]*
    """,
    re.VERBOSE,
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# Header text may hold HTAB but no other control character (a bare CR or LF included).
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 2046 5.1.1 boundaries: printable ASCII, space not last. The RFC allows at most 70
# characters, and we write no more; we read up to a configured length, as real clients send
# more (Orthanc's DICOMweb plugin: 73).
_BOUNDARY_RE = re.compile(r"[\x20-\x7e]*[\x21-\x7e]")
_RFC_BOUNDARY_LENGTH = 70
_MAX_REASON_INPUT = 100  # characters of offending input quoted in an error reason
_PIECE = 1024  # bytes moved into the buffer at a time while boundary lines and headers are read


def _excerpt(text: str) -> str:
    """Quote untrusted input in an error reason without letting it grow the response."""
    if len(text) > _MAX_REASON_INPUT:
        return repr(text[:_MAX_REASON_INPUT]) + "..."
    return repr(text)


def parse_media_type(header: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type or media-range into its lower-cased type and its parameters."""
    match = _MEDIA_TYPE_RE.match(header)
    if match is None:
        raise MalformedRequestError(
            f"malformed media type {_excerpt(header)}: expected type/subtype"
        )
    media_type = f"{match[1]}/{match[2]}".lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(header):
        param = _PARAM_RE.match(header, pos)
        if param is None:
            raise MalformedRequestError(
                f"malformed media type {_excerpt(header)}: unexpected"
                f" {_excerpt(header[pos : pos + 10])} at position {pos}"
            )
        pos = param.end()
        name, token, quoted = param.groups()
        if name is None:
            continue  # an empty parameter (";;" or a trailing ";") carries nothing
        name = name.lower()
        if name in params:
            raise MalformedRequestError(
                f"malformed media type {_excerpt(header)}: parameter {name!r} given twice"
            )
        params[name] = token if token is not None else _QUOTED_PAIR_RE.sub(r"\1", quoted)
    return media_type, params


def _check_boundary(boundary: str, max_length: int) -> bytes:
    """Return a request's boundary as bytes: RFC 2046 5.1.1 characters, up to `max_length`."""
    if len(boundary) > max_length:
        raise MalformedRequestError(
            f"multipart boundary of {len(boundary)} characters is longer than the limit of"
            f" {max_length}"
        )
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise MalformedRequestError(
            f"multipart boundary {_excerpt(boundary)} must be printable ASCII characters"
            " (at least one, the last not a space)"
        )
    return boundary.encode("ascii")


@dataclass
class MultipartPart:
    """One body part, spooled to memory or disk; whoever holds it must close it."""

    headers: dict[str, str]
    content_type: str | None
    file: Spool
    size: int

    def close(self) -> None:
        """Release the spool file (and delete it, if it went to disk)."""
        self.file.close()


def _parse_part_headers(block: bytes) -> dict[str, str]:
    """Parse `Name: value` lines, unfolding continuation lines as RFC 5322 2.2.3 allows."""
    headers: dict[str, str] = {}
    if not block:
        return headers
    lines: list[str] = []
    # latin-1 maps every byte to one character, so nothing sent is lost or refused here.
    for line in block.decode("latin-1").split("\r\n"):
        if _CTL_RE.search(line):
            raise MalformedRequestError(
                f"malformed multipart part header {_excerpt(line)}: control character"
            )
        if line[:1] in (" ", "\t"):
            if not lines:
                raise MalformedRequestError("multipart part headers start with a continuation line")
            lines[-1] += " " + line.strip(" \t")
        else:
            lines.append(line)
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            raise MalformedRequestError(
                f"malformed multipart part header {_excerpt(line)}: expected 'Name: value'"
            )
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


class _State(enum.Enum):
    """Where the reader is in the RFC 2046 5.1.1 grammar."""

    PREAMBLE = enum.auto()  # before the first delimiter; discarded
    BOUNDARY_LINE = enum.auto()  # just after a delimiter: "--" closes, padding + CRLF opens a part
    HEADERS = enum.auto()  # part headers, up to CRLF CRLF
    BODY = enum.auto()  # part body, up to the next delimiter
    DONE = enum.auto()  # after the close delimiter; the epilogue is never read


# States whose bytes are searched for the next delimiter.
_SCANNING = frozenset({_State.PREAMBLE, _State.BODY})


class _Reader:
    """The push parser behind iter_parts: feed it bytes, it yields finished parts."""

    def __init__(
        self,
        boundary: str,
        max_part_size: int,
        max_parts: int,
        max_header_size: int,
        spool_memory: int,
        spool_dir: str | None,
        max_boundary_length: int,
    ) -> None:
        self._boundary = boundary
        self._delimiter = b"\r\n--" + _check_boundary(boundary, max_boundary_length)
        self._max_part_size = max_part_size
        self._max_parts = max_parts
        self._max_header_size = max_header_size
        self._spool_memory = spool_memory
        self._spool_dir = spool_dir
        # A virtual CRLF lets a delimiter at the very start match like any other.
        self._buf = bytearray(b"\r\n")
        self._scan = 0  # bytes of _buf already searched in the current state
        self._state = _State.PREAMBLE
        self._received = 0
        self._count = 0
        self._part: MultipartPart | None = None

    @property
    def done(self) -> bool:
        """Whether the close delimiter has been read."""
        return self._state is _State.DONE

    def feed(self, data: bytes) -> Iterator[MultipartPart]:
        """Consume one chunk and yield each part it completes.

        Body bytes go to the part as views of `data`, not copied; only what follows a delimiter
        up to the end of the part headers (read `_PIECE` bytes at a time), and the end of a
        chunk that may begin a delimiter, pass through the buffer.
        """
        if self._state is _State.DONE:
            return
        self._received += len(data)
        pos, end = 0, len(data)
        delimiter = self._delimiter
        while self._state is not _State.DONE:
            if self._state not in _SCANNING:
                if self._state is _State.BOUNDARY_LINE:
                    complete = self._read_boundary_line()
                else:
                    complete = self._read_headers()
                if complete:
                    continue
                if pos >= end:
                    return
                self._buf += data[pos : pos + _PIECE]
                pos = min(end, pos + _PIECE)
                continue
            # Body bytes read along with the headers: searched in the buffer.
            if len(self._buf) >= len(delimiter) and self._find_delimiter():
                yield from self._finished()
                continue
            if self._buf:  # at most a delimiter's beginning, held from the previous chunk
                if end - pos < len(delimiter) - 1:  # too little to decide: buffer it
                    self._buf += data[pos:]
                    pos = end
                    if self._find_delimiter():
                        yield from self._finished()
                        continue
                    return
                held = len(self._buf)
                at = (bytes(self._buf) + data[pos : pos + len(delimiter) - 1]).find(delimiter)
                if 0 <= at < held:
                    self._consume(at)
                    self._buf = bytearray()
                    pos += at + len(delimiter) - held
                    self._state, self._scan = _State.BOUNDARY_LINE, 0
                    yield from self._finished()
                    continue
                self._consume(held)  # no delimiter begins there: they are body bytes
            at = data.find(delimiter, pos)
            if at < 0:
                keep = self._partial_delimiter(data, pos)
                self._write_slice(data, pos, end - keep)
                if keep:
                    self._buf = bytearray(data[end - keep :])
                return
            self._write_slice(data, pos, at)
            pos = at + len(delimiter)
            self._state, self._scan = _State.BOUNDARY_LINE, 0
            yield from self._finished()

    def _finished(self) -> Iterator[MultipartPart]:
        """The part a delimiter just closed, if any (none for the preamble)."""
        if self._part is not None:
            part, self._part = self._part, None
            part.file.seek(0)
            yield part

    def _write_slice(self, data: bytes, start: int, stop: int) -> None:
        """Append `data[start:stop]` to the part as a view (the spool keeps it, uncopied)."""
        if stop > start:
            self._write(data if stop - start == len(data) else memoryview(data)[start:stop])

    def _find_delimiter(self) -> bool:
        """Move bytes before the next delimiter into the part (or drop them in the preamble)."""
        buf, delimiter = self._buf, self._delimiter
        at = buf.find(delimiter, self._scan)
        if at < 0:
            safe = len(buf) - self._partial_delimiter(buf)
            if safe > 0:
                self._consume(safe)
            self._scan = 0
            return False
        self._consume(at)
        del buf[: len(delimiter)]
        self._state = _State.BOUNDARY_LINE
        self._scan = 0
        return True

    def _partial_delimiter(self, data: bytes | bytearray, start: int = 0) -> int:
        """Length of the tail of `data[start:]` that could begin a delimiter, to hold back."""
        # The delimiter's only CR is its first byte, so only the last CR can start one.
        cr = data.rfind(b"\r", max(start, len(data) - len(self._delimiter) + 1))
        if cr >= 0 and self._delimiter.startswith(data[cr:]):
            return len(data) - cr
        return 0

    def _consume(self, count: int) -> None:
        """Append the first `count` buffered bytes to the current part, then drop them."""
        with memoryview(self._buf) as view, view[:count] as head:
            self._write(head)
        del self._buf[:count]

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Append body bytes to the current part, within the part size limit."""
        part = self._part
        if part is None or not data:
            return  # preamble bytes are dropped
        part.size += len(data)
        if part.size > self._max_part_size:
            raise PayloadTooLargeError(
                f"multipart part {self._count} is larger than the limit of"
                f" {self._max_part_size} bytes"
            )
        part.file.write(data)

    def _read_boundary_line(self) -> bool:
        """Read what follows a delimiter: "--" ends the body, padding then CRLF starts a part."""
        buf = self._buf
        if buf[:2] == b"--":
            if self._count == 0:
                raise MalformedRequestError("multipart body contains no parts")
            self._state = _State.DONE
            self._buf = bytearray()
            return False
        if buf == b"-":
            return False
        end = buf.find(b"\r\n", self._scan)
        padding = buf[self._scan : len(buf) if end < 0 else end]
        if end < 0 and padding.endswith(b"\r"):
            padding = padding[:-1]
        if padding.strip(b" \t"):
            raise MalformedRequestError(
                f"multipart boundary {self._boundary!r} is followed by"
                f" {_excerpt(bytes(padding[:20]).decode('latin-1'))}, not CRLF or '--'"
            )
        if end < 0:
            if len(buf) > self._max_header_size:
                raise MalformedRequestError(
                    f"multipart boundary line is longer than {self._max_header_size} bytes"
                )
            self._scan = max(0, len(buf) - 1)
            return False
        self._count += 1
        if self._count > self._max_parts:
            raise PayloadTooLargeError(
                f"multipart body has more parts than the limit of {self._max_parts}"
            )
        # Keep the line's CRLF so an empty header block is just CRLF CRLF.
        del buf[:end]
        self._state = _State.HEADERS
        self._scan = 0
        return True

    def _read_headers(self) -> bool:
        """Parse the part's header block once its closing CRLF CRLF has arrived."""
        buf = self._buf
        # The block sits between the boundary line's CRLF and the closing CRLF CRLF.
        limit = self._max_header_size + 6
        end = buf.find(b"\r\n\r\n", self._scan, limit)
        if end < 0:
            if len(buf) >= limit:
                raise MalformedRequestError(
                    f"multipart part {self._count} headers are larger than"
                    f" {self._max_header_size} bytes"
                )
            self._scan = max(0, len(buf) - 3)
            return False
        headers = _parse_part_headers(bytes(buf[2:end]))
        del buf[: end + 4]
        self._part = MultipartPart(
            headers=headers,
            content_type=headers.get("content-type"),
            file=Spool(self._spool_memory, self._spool_dir),
            size=0,
        )
        self._state = _State.BODY
        self._scan = 0
        return True

    def finish(self) -> None:
        """Check, at the end of the stream, that the close delimiter was read."""
        if self._state is _State.DONE:
            return
        if self._state is _State.PREAMBLE:
            if self._received == 0:
                raise MalformedRequestError("multipart body is empty: it contains no parts")
            raise MalformedRequestError(
                f"multipart body has no delimiter for boundary {self._boundary!r}"
            )
        raise MalformedRequestError(
            f"multipart body ends before the close delimiter '--{self._boundary}--'"
        )

    def abort(self) -> None:
        """Close the part being read, which nobody else holds yet."""
        if self._part is not None:
            self._part.close()
            self._part = None


async def iter_parts(
    chunks: AsyncIterator[bytes],
    boundary: str,
    *,
    max_part_size: int,
    max_parts: int,
    max_header_size: int = 16384,
    spool_memory: int = 1 << 20,
    spool_dir: str | None = None,
    max_boundary_length: int = 256,
) -> AsyncIterator[MultipartPart]:
    """Yield each body part as its closing delimiter arrives, spooling bodies past a bound."""
    reader = _Reader(
        boundary,
        max_part_size,
        max_parts,
        max_header_size,
        spool_memory,
        spool_dir,
        max_boundary_length,
    )
    try:
        async for chunk in chunks:
            for part in reader.feed(chunk):
                yield part
            if reader.done:
                break
        reader.finish()
    finally:
        reader.abort()


def new_boundary() -> str:
    """Return a fresh random boundary, too unlikely to occur in any body to need a check."""
    return uuid.uuid4().hex


def _quoted(value: str) -> str:
    """Write a parameter value as an RFC 9110 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _param_value(value: str) -> str:
    """Write a parameter value as a token when it is one, else as a quoted-string."""
    return value if _TOKEN_RE.fullmatch(value) else _quoted(value)


def multipart_content_type(type_: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """Build the Content-Type of a multipart/related response (PS3.18 8.7.3.5)."""
    value = f"multipart/related; type={_quoted(type_)}; boundary={_param_value(boundary)}"
    if transfer_syntax is not None:
        value += f"; transfer-syntax={_param_value(transfer_syntax)}"
    return value


def _encode_part_headers(headers: dict[str, str]) -> bytes:
    """Serialize part headers, refusing names or values that would break the framing."""
    lines = []
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name) or _CTL_RE.search(value):
            raise ValueError(f"invalid multipart part header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


def _marker(boundary: str) -> bytes:
    # A bad boundary here is our bug, not the client's: a built-in error, never a 400.
    if len(boundary) > _RFC_BOUNDARY_LENGTH or not _BOUNDARY_RE.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    return b"--" + boundary.encode("ascii")


def multipart_framing(headers: Iterable[dict[str, str]], boundary: str) -> list[bytes]:
    """The bytes `iter_multipart` writes around the bodies of parts with these headers: one
    piece before each body, then the closing delimiter."""
    marker = _marker(boundary)
    pieces = [_opening(marker, n > 0, part) for n, part in enumerate(headers)]
    pieces.append(_closing(marker, bool(pieces)))
    return pieces


def _opening(marker: bytes, after_part: bool, headers: dict[str, str]) -> bytes:
    """What comes before a part's body: its delimiter (after the CRLF that ends the previous
    part, which travels with it) and its headers."""
    lead = b"\r\n" if after_part else b""
    return lead + marker + b"\r\n" + _encode_part_headers(headers) + b"\r\n"


def _closing(marker: bytes, after_part: bool) -> bytes:
    return (b"\r\n" if after_part else b"") + marker + b"--\r\n"


async def iter_multipart(
    parts: AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes | memoryview]]], boundary: str
) -> AsyncIterator[bytes | memoryview]:
    """Yield a multipart/related body part by part, passing body chunks through uncopied."""
    marker = _marker(boundary)
    after_part = False
    async for headers, body in parts:
        yield _opening(marker, after_part, headers)
        try:
            async for chunk in body:
                if chunk:
                    yield chunk
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        after_part = True
    yield _closing(marker, after_part)
