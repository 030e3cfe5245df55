"""Our multipart/related reader against python-multipart's parser, in process (not `make bench`).

`python -m bench.multipart_parsers` feeds the same STOW-RS bodies (50 CT slices of 513 KB, 200
parts of 20 KB, one part of 100 MB) in 64 KiB and 1 MiB chunks to `web.multipart.iter_parts`,
driven as `web/store.py` drives it, and to python-multipart's `MultipartParser` behind an
adapter (`iter_parts_pm`) with the same limits, reasons and `Spool` (the received chunks kept
as views, a temp file past the 4 MiB threshold; "bigmem" keeps the 100 MB part in memory to
show the parsers' own cost). Each part's spool is then consumed as the store service does:
SHA-256 over its chunks, or over the file. It reports CPU per part (`time.process_time`,
median and p10-p90 over interleaved rounds), Python memory (tracemalloc) and where part bytes
went (kept or copied), and a table of how each parser treats what real clients send.
python-multipart is not a dependency: `.venv/bin/pip install python-multipart` first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomweb_server.errors import DicomwebError, MalformedRequestError, PayloadTooLargeError
from dicomweb_server.services.spool import Spool
from dicomweb_server.web.multipart import MultipartPart, iter_parts

try:
    import python_multipart
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser
except ImportError:  # pragma: no cover - a message, not a traceback
    sys.exit("python-multipart is not installed: .venv/bin/pip install python-multipart")

__all__ = ["iter_parts_pm", "main"]

# python-multipart logs each framing error as a warning before it raises; the table says it.
logging.getLogger("python_multipart").setLevel(logging.CRITICAL)

KIB = 1 << 10
MIB = 1 << 20
# The server's defaults (config.py): what a STOW request gets unless configured otherwise.
MAX_REQUEST = 8 << 30
MAX_PART = 4 << 30
MAX_PARTS = 10_000
SPOOL_MEMORY = 4 << 20
MAX_HEADER = 16384
CHUNK_SIZES = (64 * KIB, 1 * MIB)

# ---------------------------------------------------------------------------------------------
# python-multipart behind our limits: what `iter_parts` would become if we switched.


class _PmAdapter:
    """MultipartParser callbacks that build our `MultipartPart`s under our limits and reasons.

    Framing errors keep python-multipart's wording, and its `max_header_size` bounds each
    header line, not the whole block. Parts that one `write` completes are all spooled before
    the first is yielded (callbacks cannot yield). `copy=False` spools
    `memoryview(data)[start:end]`, a view of the received chunk (the parser hands back the
    very bytes object it was given); `copy=True` spools `data[start:end]`, as Starlette's
    form parser does.
    """

    def __init__(
        self,
        boundary: str,
        *,
        max_part_size: int,
        max_parts: int,
        max_header_size: int,
        spool_memory: int,
        spool_dir: str | None,
        copy: bool,
    ) -> None:
        self.boundary = boundary
        self.max_part_size = max_part_size
        self.max_parts = max_parts
        self.spool_memory = spool_memory
        self.spool_dir = spool_dir
        self.copy = copy
        self.count = 0
        self.ended = False
        self.received = 0
        self.ready: list[MultipartPart] = []
        self._part: MultipartPart | None = None
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        try:
            self.parser = MultipartParser(
                boundary.encode("latin-1"),
                {
                    "on_part_begin": self._on_part_begin,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_end": self._on_end,
                },
                max_header_count=32,
                max_header_size=max_header_size,
            )
        except (FormParserError, UnicodeEncodeError) as exc:
            raise MalformedRequestError(f"multipart boundary {boundary!r}: {exc}") from exc

    def _on_part_begin(self) -> None:
        self.count += 1
        if self.count > self.max_parts:
            raise PayloadTooLargeError(
                f"multipart body has more parts than the limit of {self.max_parts}"
            )
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        key = self._field.decode("latin-1").lower()
        value = self._value.decode("latin-1").strip(" \t")
        self._field.clear()
        self._value.clear()
        old = self._headers.get(key)
        self._headers[key] = value if old is None else f"{old}, {value}"

    def _on_headers_finished(self) -> None:
        self._part = MultipartPart(
            headers=self._headers,
            content_type=self._headers.get("content-type"),
            file=Spool(self.spool_memory, self.spool_dir),
            size=0,
        )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        part.size += end - start
        if part.size > self.max_part_size:
            raise PayloadTooLargeError(
                f"multipart part {self.count} is larger than the limit of"
                f" {self.max_part_size} bytes"
            )
        if self.copy:
            part.file.write(data[start:end])
        elif start == 0 and end == len(data):
            part.file.write(data)
        else:
            part.file.write(memoryview(data)[start:end])

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            part.file.seek(0)
            self.ready.append(part)

    def _on_end(self) -> None:
        self.ended = True

    def feed(self, data: bytes) -> Iterator[MultipartPart]:
        self.received += len(data)
        try:
            self.parser.write(data)
        except FormParserError as exc:  # MultipartParseError: the framing is wrong
            raise MalformedRequestError(f"malformed multipart body: {exc}") from exc
        while self.ready:  # what the consumer has not taken yet, `abort` closes
            yield self.ready.pop(0)

    def finish(self) -> None:
        """What python-multipart's `finalize` leaves to us: was the close delimiter read?"""
        self.parser.finalize()  # a no-op in 0.0.x
        if self.ended:
            if self.count == 0:
                raise MalformedRequestError("multipart body contains no parts")
            return
        if self.received == 0:
            raise MalformedRequestError("multipart body is empty: it contains no parts")
        raise MalformedRequestError(
            f"multipart body ends before the close delimiter '--{self.boundary}--'"
        )

    def abort(self) -> None:
        for part in self.ready:
            part.close()
        self.ready = []
        if self._part is not None:
            self._part.close()
            self._part = None


async def iter_parts_pm(
    chunks: AsyncIterator[bytes],
    boundary: str,
    *,
    max_part_size: int,
    max_parts: int,
    max_header_size: int = MAX_HEADER,
    spool_memory: int = 1 << 20,
    spool_dir: str | None = None,
    copy: bool = False,
) -> AsyncIterator[MultipartPart]:
    """`iter_parts` with python-multipart underneath: same signature, parts, limits, reasons."""
    adapter = _PmAdapter(
        boundary,
        max_part_size=max_part_size,
        max_parts=max_parts,
        max_header_size=max_header_size,
        spool_memory=spool_memory,
        spool_dir=spool_dir,
        copy=copy,
    )
    try:
        async for chunk in chunks:
            for part in adapter.feed(chunk):
                yield part
            if adapter.ended:
                break
        adapter.finish()
    finally:
        adapter.abort()


# ---------------------------------------------------------------------------------------------
# Bodies, and driving a parser as web/store.py does.


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    parts: int
    body: bytes
    boundary: str
    expected: tuple[str, ...]  # SHA-256 of each part
    spool_memory: int = SPOOL_MEMORY  # the server's default: past 4 MiB a part goes to a file


def _ct_slice(size: int, index: int) -> bytes:
    """A CT slice as the bench corpus makes it (`bench/corpus.py`): a real Part 10 file."""
    import numpy as np

    from bench import corpus

    ds = corpus._base_dataset(
        corpus.CT_STORAGE, corpus.EXPLICIT_VR_LE, corpus._uid(1, 0), corpus._uid(1, 0, 0),
        corpus._uid(1, 0, 0, index), patient="CT", modality="CT", number=index + 1,
        series_number=1, description="Axial",
    )  # fmt: skip
    corpus._monochrome16(ds, size, size)
    rng = np.random.default_rng(20240601 + index)
    ds.PixelData = corpus._phantom(size, index / 50, rng).tobytes()
    return corpus._to_bytes(ds)


def _body(files: Sequence[bytes], boundary: str) -> bytes:
    """A STOW-RS body framed exactly as `bench/client.py` frames it."""
    pieces = []
    for data in files:
        pieces.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        pieces.append(data)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces)


def build_cases(big_mb: int) -> list[Case]:
    boundary = "3f9c0e6a1b2d4c5e8f7a6b5c4d3e2f10"  # like uuid4().hex, as our client sends
    ct = [_ct_slice(512, i) for i in range(50)]
    small = [_ct_slice(96, i % 50) for i in range(200)]
    tile = ct[0][len(ct[0]) - 512 * 512 * 2 :]  # pixel bytes, not zeros, for a fair find()
    big = (ct[0][: -len(tile)] + tile * (big_mb * 1_000_000 // len(tile) + 1))[: big_mb * 1_000_000]
    cases = []
    for name, files in (("ct", ct), ("small", small), ("big", [big])):
        expected = tuple(hashlib.sha256(f).hexdigest() for f in files)
        cases.append(Case(name, len(files), _body(files, boundary), boundary, expected))
    # The same large part kept in memory: the parser's own cost, without the temp file's.
    big_case = cases[-1]
    cases.append(
        Case("bigmem", 1, big_case.body, boundary, big_case.expected, 2 * len(big_case.body))
    )
    return cases


def split(body: bytes, size: int) -> list[bytes]:
    """The body as uvicorn hands it over: separate bytes objects (web/zerocopy.py)."""
    return [body[i : i + size] for i in range(0, len(body), size)]


async def _source(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """web/store.py's body size limit, the same for both parsers."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        yield chunk


PartsFactory = Callable[[AsyncIterator[bytes], str, str | None, int], AsyncIterator[MultipartPart]]


def _ours(
    chunks: AsyncIterator[bytes], boundary: str, spool_dir: str | None, spool_memory: int
) -> Any:
    return iter_parts(
        chunks, boundary, max_part_size=MAX_PART, max_parts=MAX_PARTS,
        spool_memory=spool_memory, spool_dir=spool_dir,
    )  # fmt: skip


def _pm_view(
    chunks: AsyncIterator[bytes], boundary: str, spool_dir: str | None, spool_memory: int
) -> Any:
    return iter_parts_pm(
        chunks, boundary, max_part_size=MAX_PART, max_parts=MAX_PARTS,
        spool_memory=spool_memory, spool_dir=spool_dir, copy=False,
    )  # fmt: skip


def _pm_copy(
    chunks: AsyncIterator[bytes], boundary: str, spool_dir: str | None, spool_memory: int
) -> Any:
    return iter_parts_pm(
        chunks, boundary, max_part_size=MAX_PART, max_parts=MAX_PARTS,
        spool_memory=spool_memory, spool_dir=spool_dir, copy=True,
    )  # fmt: skip


PARSERS: dict[str, PartsFactory] = {"ours": _ours, "pm-view": _pm_view, "pm-copy": _pm_copy}


async def consume(
    factory: PartsFactory,
    chunks: Sequence[bytes],
    boundary: str,
    spool_dir: str | None,
    spool_memory: int,
    digest: bool,
) -> list[str]:
    """One STOW body: each part's Content-Type checked, its spool hashed (or only walked)."""
    digests = []
    source = _source(chunks)
    limited = _limited(source, MAX_REQUEST)
    async for part in factory(limited, boundary, spool_dir, spool_memory):
        with part.file as spool:
            if part.content_type is None or "dicom" not in part.content_type.lower():
                raise AssertionError(f"part Content-Type {part.content_type!r}")
            if digest:
                digests.append(spool.sha256())
            elif spool.in_memory:
                for _ in spool.buffers():
                    pass
                digests.append("")
            else:
                digests.append("")
    await limited.aclose()  # both readers stop at the close delimiter, before the source ends
    await source.aclose()
    return digests


# ---------------------------------------------------------------------------------------------
# CPU and memory.


@dataclass
class _Samples:
    """CPU seconds per part, one sample per parsed body."""

    samples: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        n = len(ordered)
        return {
            "median_ms": statistics.median(ordered) * 1e3,
            "p10_ms": ordered[n // 10] * 1e3,
            "p90_ms": ordered[min(n - 1, (9 * n) // 10)] * 1e3,
            "n": n,
        }


def time_cpu(
    loop: asyncio.AbstractEventLoop,
    cases: Sequence[Case],
    rounds: int,
    spool_dir: str,
    digest: bool,
    reps: dict[str, int],
) -> dict[str, dict[str, dict[str, float]]]:
    """Interleaved rounds: in each, every (case, chunk size) parses the body with each parser
    in turn, `reps` times over, the order rotating from round to round."""
    names = list(PARSERS)
    results: dict[tuple[str, int, str], _Samples] = {}
    for round_number in range(rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for case in cases:
            for size in CHUNK_SIZES:
                chunks = split(case.body, size)
                for _ in range(reps[case.name]):
                    for name in order:
                        gc.collect()
                        started = time.process_time()
                        body = consume(
                            PARSERS[name],
                            chunks,
                            case.boundary,
                            spool_dir,
                            case.spool_memory,
                            digest,
                        )
                        got = loop.run_until_complete(body)
                        elapsed = time.process_time() - started
                        if len(got) != case.parts or (digest and tuple(got) != case.expected):
                            raise AssertionError(f"{name} misparsed {case.name}")
                        samples = results.setdefault((case.name, size, name), _Samples())
                        samples.samples.append(elapsed / case.parts)
        print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (case_name, size, name), samples in results.items():
        out.setdefault(f"{case_name}/{size // KIB}K", {})[name] = samples.summary()
    return out


async def _where_bytes_go(
    factory: PartsFactory,
    chunks: Sequence[bytes],
    boundary: str,
    spool_dir: str,
    spool_memory: int,
    tally: dict[str, int],
) -> int:
    """Parse one body, adding each part's bytes to tally["kept"] (the received chunks or views
    of them), tally["copied"] (new bytes) or tally["file"] (the spool rolled over)."""
    received = {id(chunk) for chunk in chunks}
    n = 0
    source = _source(chunks)
    limited = _limited(source, MAX_REQUEST)
    async for part in factory(limited, boundary, spool_dir, spool_memory):
        with part.file as spool:
            if not spool.in_memory:
                tally["file"] += spool.size
            for buffer in spool.buffers() if spool.in_memory else ():
                base = buffer.obj if isinstance(buffer, memoryview) else buffer
                tally["kept" if id(base) in received else "copied"] += len(buffer)
            spool.sha256()
        n += 1
    await limited.aclose()
    await source.aclose()
    return n


def measure_memory(
    loop: asyncio.AbstractEventLoop, cases: Sequence[Case], spool_dir: str
) -> dict[str, dict[str, dict[str, float]]]:
    """Per parser: the peak of Python memory over a body (tracemalloc; the received chunks are
    allocated before it starts), and where each part's bytes went."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for case in cases:
        for size in CHUNK_SIZES:
            chunks = split(case.body, size)
            for name, factory in PARSERS.items():
                tally = {"kept": 0, "copied": 0, "file": 0}
                # Warm: the spool's reused read buffer, lazy imports.
                loop.run_until_complete(
                    _where_bytes_go(
                        factory, chunks, case.boundary, spool_dir, case.spool_memory, dict(tally)
                    )
                )
                gc.collect()
                tracemalloc.start()
                try:
                    n = loop.run_until_complete(
                        _where_bytes_go(
                            factory, chunks, case.boundary, spool_dir, case.spool_memory, tally
                        )
                    )
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                if n != case.parts:
                    raise AssertionError(f"{name} misparsed {case.name}")
                total = sum(tally.values())
                out.setdefault(f"{case.name}/{size // KIB}K", {})[name] = {
                    "peak_kb": peak / 1e3,
                    "kept_pct": 100 * tally["kept"] / total,
                    "copied_pct": 100 * tally["copied"] / total,
                    "file_pct": 100 * tally["file"] / total,
                    "copied_kb_per_part": tally["copied"] / case.parts / 1e3,
                }
    return out


# ---------------------------------------------------------------------------------------------
# Behaviour on what clients send.

_B = "b0undary"
_ORTHANC = "e2a8b3a4-1c2d-4e5f-8a9b-0c1d2e3f4a5b-7c6d5e4f-3a2b-4c1d-9e8f-7a6b5c4d3e2f"


def _framed(
    boundary: str, *bodies: bytes, header: bytes = b"Content-Type: application/dicom"
) -> bytes:
    out = b""
    for data in bodies:
        out += b"--" + boundary.encode() + b"\r\n" + header + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


@dataclass(frozen=True, slots=True)
class Behaviour:
    name: str
    boundary: str
    body: bytes
    expected: tuple[bytes, ...] | None  # the parts a correct reader returns; None: must reject
    note: str = ""
    should: str = ""  # when both answers are defensible
    limits: dict[str, int] = field(default_factory=dict)  # iter_parts keywords, and "body"


def behaviours() -> list[Behaviour]:
    b = _B.encode()
    plain = _framed(_B, b"AAAA", b"BBBB")
    nine = b"\r\n".join(f"X-H{i}: {i}".encode() for i in range(8))
    return [
        Behaviour("reference: 2 parts", _B, plain, (b"AAAA", b"BBBB")),
        Behaviour(
            "boundary of 73 characters (Orthanc: two UUIDs)",
            _ORTHANC,
            _framed(_ORTHANC, b"AAAA", b"BBBB"),
            (b"AAAA", b"BBBB"),
            "RFC 2046 says 1..70; Orthanc's STOW client sends 73",
        ),
        Behaviour(
            "boundary of 71 characters, quoted-style (space inside)",
            "a b" + "c" * 68,
            _framed("a b" + "c" * 68, b"AAAA"),
            (b"AAAA",),
        ),
        Behaviour(
            "first delimiter with a leading CRLF (CRLF preamble)",
            _B,
            b"\r\n" + plain,
            (b"AAAA", b"BBBB"),
        ),
        Behaviour(
            "no CRLF before a later delimiter (data--boundary)",
            _B,
            plain.replace(b"\r\n--", b"--"),
            None,
            "not a delimiter per RFC 2046: no close delimiter follows, so the body is truncated",
        ),
        Behaviour(
            "preamble text and epilogue text",
            _B,
            b"This is a preamble.\r\n" + plain + b"This is the epilogue.\r\n",
            (b"AAAA", b"BBBB"),
            "RFC 2046 5.1.1 allows both",
        ),
        Behaviour("epilogue text only", _B, plain + b"trailing words\r\n", (b"AAAA", b"BBBB")),
        Behaviour(
            "close delimiter without its CRLF",
            _B,
            plain[:-2],
            (b"AAAA", b"BBBB"),
        ),
        Behaviour(
            "missing close delimiter (ends after a part's CRLF)",
            _B,
            plain[: plain.rindex(b"--" + b + b"--")],
            None,
            "must be an error: the client may have been cut off",
        ),
        Behaviour(
            "missing close delimiter (cut inside a part)",
            _B,
            plain[: plain.index(b"BBBB") + 2],
            None,
        ),
        Behaviour("close delimiter only (no parts)", _B, b"--" + b + b"--\r\n", None),
        Behaviour("empty body", _B, b"", None),
        Behaviour("body without any delimiter", _B, b"hello world\r\n", None),
        Behaviour(
            "folded header (continuation line)",
            _B,
            _framed(_B, b"AAAA", header=b"Content-Type:\r\n application/dicom"),
            (b"AAAA",),
            "RFC 5322 2.2.3 folding (obsolete in HTTP, still allowed in MIME)",
        ),
        Behaviour(
            "header names in odd case (CONTENT-type)",
            _B,
            _framed(_B, b"AAAA", header=b"CONTENT-type: Application/DICOM"),
            (b"AAAA",),
        ),
        Behaviour(
            "header without a space after the colon",
            _B,
            _framed(_B, b"AAAA", header=b"Content-Type:application/dicom"),
            (b"AAAA",),
        ),
        Behaviour(
            "9 headers in one part",
            _B,
            _framed(_B, b"AAAA", header=nine + b"\r\nContent-Type: application/dicom"),
            (b"AAAA",),
            "python-multipart's default max_header_count is 8 (the adapter sets 32)",
        ),
        Behaviour(
            "control characters in a header value (NUL, bare LF)",
            _B,
            _framed(_B, b"AAAA", header=b"Content-Type: application/dicom\x00\nX-Evil: 1"),
            None,
            "bytes no header may hold (RFC 9110 5.5)",
        ),
        Behaviour("single part of 1 byte", _B, _framed(_B, b"A"), (b"A",)),
        Behaviour("single empty part", _B, _framed(_B, b""), (b"",)),
        Behaviour(
            "boundary inside data after a non-CRLF byte",
            _B,
            _framed(_B, b"xx--" + b + b"\r\nyy", b"zz\n--" + b + b"--"),
            (b"xx--" + b + b"\r\nyy", b"zz\n--" + b + b"--"),
            "X--boundary and LF--boundary are data",
        ),
        Behaviour(
            "transport padding after the first delimiter",
            _B,
            plain.replace(b"--" + b + b"\r\n", b"--" + b + b"  \r\n", 1),
            (b"AAAA", b"BBBB"),
            "RFC 2046 5.1.1 transport-padding (spaces before the CRLF)",
        ),
        Behaviour(
            "transport padding after a later delimiter",
            _B,
            plain.replace(b"\r\n--" + b + b"\r\n", b"\r\n--" + b + b" \t\r\n"),
            (b"AAAA", b"BBBB"),
        ),
        Behaviour(
            "delimiter followed by other text",
            _B,
            plain.replace(b"--" + b + b"\r\nContent", b"--" + b + b"X\r\nContent", 1),
            None,
        ),
        Behaviour(
            "CRLF--boundary then other text, inside data",
            _B,
            _framed(_B, b"xx\r\n--" + b + b"X yy"),
            (b"xx\r\n--" + b + b"X yy",),
            "RFC 2046 forbids the delimiter in data, so rejecting is also right",
            "either",
        ),
        Behaviour(
            "LF-only line ends",
            _B,
            plain.replace(b"\r\n", b"\n"),
            None,
            "not MIME; no DICOMweb client known to send it",
        ),
        Behaviour(
            "limit: a part over max_part_size (3 bytes)",
            _B,
            plain,
            None,
            limits={"max_part_size": 3},
        ),
        Behaviour("limit: more parts than max_parts (1)", _B, plain, None, limits={"max_parts": 1}),
        Behaviour(
            "limit: part headers over max_header_size (64)",
            _B,
            _framed(_B, b"AAAA", header=b"X-Long: " + b"x" * 100),
            None,
            limits={"max_header_size": 64},
        ),
        Behaviour(
            "limit: body over the request limit (20 bytes)",
            _B,
            plain,
            None,
            "web/store.py's check, around either reader",
            limits={"body": 20},
        ),
        Behaviour(
            "part without headers",
            _B,
            b"--" + b + b"\r\n\r\nAAAA\r\n--" + b + b"--\r\n",
            (b"AAAA",),
            "framing is fine; STOW then reports the part as failed (no Content-Type)",
        ),
    ]


def _bare_pm(case: Behaviour, chunk: int) -> str:
    """python-multipart alone (write, then finalize), as Starlette uses it."""
    got: list[bytes] = []
    current = bytearray()
    ended = [False]

    def on_data(data: bytes, start: int, end: int) -> None:
        current.extend(data[start:end])

    def on_end_part() -> None:
        got.append(bytes(current))
        current.clear()

    def on_end() -> None:
        ended[0] = True

    if {"max_part_size", "max_parts"} & case.limits.keys():
        return "n/a: no such limit (a callback must count)"
    options: dict[str, Any] = {}
    if "body" in case.limits:
        options["max_size"] = case.limits["body"]  # it truncates (and logs), it does not raise
    if "max_header_size" in case.limits:
        options["max_header_size"] = case.limits["max_header_size"]
    try:
        parser = MultipartParser(
            case.boundary.encode("latin-1"),
            {"on_part_data": on_data, "on_part_end": on_end_part, "on_end": on_end},
            **options,
        )
        for i in range(0, len(case.body), chunk):
            parser.write(case.body[i : i + chunk])
        parser.finalize()
    except Exception as exc:
        return f"rejects: {type(exc).__name__}: {exc}"
    return _verdict(case, tuple(got), extra="" if ended[0] else " (no close delimiter seen)")


def _ours_or_adapter(case: Behaviour, chunk: int, reader: Callable[..., Any]) -> str:
    async def run() -> tuple[bytes, ...]:
        limits = {"max_part_size": MAX_PART, "max_parts": MAX_PARTS, **case.limits}
        body_limit = limits.pop("body", MAX_REQUEST)
        parts = reader(
            _limited(
                _source([case.body[i : i + chunk] for i in range(0, len(case.body), chunk)]),
                body_limit,
            ),
            case.boundary,
            **limits,
        )
        out = []
        async for part in parts:
            with part.file as spool:
                out.append(spool.read())
        return tuple(out)

    try:
        got = asyncio.run(run())
    except DicomwebError as exc:
        return f"rejects: {exc.reason}"
    return _verdict(case, got)


def _verdict(case: Behaviour, got: tuple[bytes, ...], extra: str = "") -> str:
    if case.expected is not None and got == case.expected:
        return f"accepts{extra}"
    shown = ", ".join(repr(g[:24]) for g in got[:3]) or "none"
    return f"accepts WRONGLY: {len(got)} parts ({shown}){extra}"


def check_behaviours() -> list[dict[str, str]]:
    """Each case at two chunkings (whole body, 1 byte at a time); a difference is shown."""
    rows = []
    for case in behaviours():
        should = case.should or ("accept" if case.expected is not None else "reject")
        row = {"case": case.name, "should": should}
        for label, run in (
            ("ours", lambda c, n: _ours_or_adapter(c, n, iter_parts)),
            ("python-multipart", _bare_pm),
            ("pm + adapter", lambda c, n: _ours_or_adapter(c, n, iter_parts_pm)),
        ):
            whole = run(case, max(1, len(case.body)))
            bytewise = run(case, 1)  # the same verdict, whatever the chunking? (offsets aside)
            same = whole.split(":")[0] == bytewise.split(":")[0]
            row[label] = whole if same else f"{whole} | 1-byte chunks: {bytewise}"
        row["note"] = case.note
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------


def _render(report: dict[str, Any]) -> str:
    lines = [f"python-multipart {report['python_multipart']}, Python {report['python']}", ""]
    for key, title in (("cpu_parse", "parse only"), ("cpu_sha256", "parse + SHA-256")):
        if key not in report:
            continue
        lines += [
            f"CPU per part, {title}: median [p10-p90] ms (n)",
            "| case/chunk | ours | pm-view | pm-copy | pm-view/ours |",
            "|---|---|---|---|---|",
        ]
        for label, row in report[key].items():
            cells = [
                f"{row[n]['median_ms']:.4f} [{row[n]['p10_ms']:.4f}-{row[n]['p90_ms']:.4f}]"
                f" ({row[n]['n']})"
                for n in PARSERS
            ]
            ratio = row["pm-view"]["median_ms"] / row["ours"]["median_ms"]
            lines.append(f"| {label} | {' | '.join(cells)} | {ratio:.2f} |")
        lines.append("")
    if "memory" in report:
        lines += [
            "Python memory peak (KB); part bytes kept as received chunks / copied / to file",
            "| case/chunk | ours | pm-view | pm-copy |",
            "|---|---|---|---|",
        ]
        for label, row in report["memory"].items():
            cells = [
                f"{row[n]['peak_kb']:,.0f} KB; {row[n]['kept_pct']:.1f} / "
                f"{row[n]['copied_pct']:.1f} / {row[n]['file_pct']:.0f} %"
                for n in PARSERS
            ]
            lines.append(f"| {label} | {' | '.join(cells)} |")
        lines.append("")
    if "behaviour" in report:
        lines += [
            "| case | should | ours | python-multipart | pm + adapter |",
            "|---|---|---|---|---|",
        ]
        for row in report["behaviour"]:
            cells = [row[k].replace("|", "/") for k in ("ours", "python-multipart", "pm + adapter")]
            lines.append(f"| {row['case']} | {row['should']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multipart_parsers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument(
        "--reps", type=int, default=12, help="CT bodies per parser and round (small: 2×, big: 2)"
    )
    parser.add_argument("--big-mb", type=int, default=100, help="size of the single large part")
    parser.add_argument(
        "--only", default="behaviour,memory,parse,sha256", help="comma-separated sections"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    report: dict[str, Any] = {
        "python_multipart": python_multipart.__version__,
        "python": sys.version.split()[0],
    }
    if "behaviour" in only:
        report["behaviour"] = check_behaviours()
    if only & {"memory", "parse", "sha256"}:
        print("building bodies...", file=sys.stderr)
        cases = build_cases(args.big_mb)
        # The large part crosses the spool threshold: each body writes big_mb to a temp file.
        reps = {"ct": args.reps, "small": 2 * args.reps, "big": 2, "bigmem": 2}
        loop = asyncio.new_event_loop()
        with tempfile.TemporaryDirectory(prefix="mp-bench-") as spool_dir:
            if "memory" in only:
                report["memory"] = measure_memory(loop, cases, spool_dir)
            for mode in ("parse", "sha256"):
                if mode in only:
                    print(f"timing ({mode})...", file=sys.stderr)
                    report[f"cpu_{mode}"] = time_cpu(
                        loop, cases, args.rounds, spool_dir, mode == "sha256", reps
                    )
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    print(_render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
