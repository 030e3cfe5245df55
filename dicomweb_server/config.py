"""A frozen `Settings`, read from DICOMWEB_* environment variables; every limit is named here."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Server configuration; each field is also DICOMWEB_<FIELD_NAME_UPPER> in the environment."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # uvicorn worker processes; 0: one per CPU core
    # 1: with several workers, the one serving fewest connections accepts first (web/balance.py)
    accept_balance: int = 1
    data_dir: Path = Path("data")
    # Public URL of the DICOMweb root, used in RetrieveURL and BulkDataURI values.
    # Empty: http://{host}:{port}/dicomweb (never the request's Host header alone).
    base_url: str = ""
    # Backends: empty means the embedded pair under data_dir.
    database_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_multipart_threshold: int = 8 << 20  # objects above this upload in parts
    s3_part_size: int = 8 << 20  # bytes buffered per part (S3's minimum is 5 MiB)
    s3_read_connections: int = 64  # connections kept to the S3 endpoint for reads, per process
    database_pool_size: int = 10  # PostgreSQL connections per worker process
    backend_timeout: int = 30  # seconds before a slow index or store query becomes a 503
    log_level: str = "info"

    # STOW-RS limits
    max_request_bytes: int = 8 << 30  # a whole STOW body
    max_part_bytes: int = 4 << 30  # one instance
    max_parts: int = 10_000  # instances per request
    max_boundary_length: int = 256  # multipart boundary characters (RFC 2046: 70; Orthanc sends 73)
    spool_memory_bytes: int = 4 << 20  # a part above this spools to disk
    # Parts of one request parsed and written at once, each holding its spool (memory or disk):
    # one instance's fsync or upload overlaps the next one's parsing.
    store_pipeline_depth: int = 4
    store_index_batch: int = 50  # written instances indexed per transaction (one commit each)
    # Part 10 parsing limits
    bulk_data_threshold: int = 1024  # binary values above this become BulkDataURIs
    max_sequence_depth: int = 64
    max_frames: int = 100_000
    max_pixel_bytes: int = 4 << 30
    # QIDO-RS limits
    default_query_limit: int = 1000
    max_query_limit: int = 10_000
    max_query_offset: int = 10_000_000
    # Request bounds against slow or many clients (hostile input hardening)
    body_timeout: int = 60  # seconds to wait for the next chunk of a request body, else 408
    request_timeout: int = 3600  # seconds a request may run before it is cut off (408 or 503)
    max_concurrent_stores: int = 8  # STOW requests in flight per process; more get 429
    max_header_bytes: int = 64 << 20  # Part 10 bytes parsed into memory per instance (not bulk)
    # WADO-RS transcoding (passed to RetrieveService by app.py)
    # Threads for codec work per process (0 = one per core). Default 1: a full test run crashed
    # once in native code with concurrent transcodes, so codec calls are serialised per process
    # until the codecs move to a crash-isolated process pool; scale with --workers instead.
    codec_workers: int = 1
    frame_cache: int = 1  # 1: keep transcoded frames in the blob store under {site}/cache/
    # WADO-RS streaming: the next objects are fetched while the current one is sent
    wado_read_ahead_objects: int = 8  # objects fetched ahead per response (1: none ahead)
    wado_read_ahead_bytes: int = 16 << 20  # bytes held ahead per response; larger objects stream
    # A study or series of at most this many instances is listed before its first byte, so an
    # answer sent as stored carries a Content-Length (no chunked framing, one copy less)
    wado_sized_max_instances: int = 2000
    # 1: stored files in such answers are sent by the kernel (sendfile via the ASGI zero-copy
    # extension, web/zerocopy.py) when served by `dicomweb-server serve`; 0: through the loop
    wado_zero_copy: int = 1
    # Rendered resources and thumbnails (PS3.18 10.4.1.1.3, 8.3.5)
    thumbnail_size: int = 128  # default thumbnail viewport, pixels a side
    thumbnail_cache: int = 1  # 1: keep thumbnails in the blob store under {site}/cache/
    render_memory_cache_bytes: int = 32 << 20  # rendered images kept in memory per process
    max_viewport: int = 4096  # largest viewport width or height a request may ask for
    http_cache_max_age: int = 3600  # Cache-Control max-age of instance images, frames, metadata
    # Browsers: CORS and compression
    cors_origins: str = "*"  # origins that may read, comma-separated ("*": any, "": none)
    cors_write_origins: str = ""  # origins that may also store (POST); same syntax
    cors_allow_headers: str = ""  # request headers a preflight may name ("": any it asks for)
    cors_max_age: int = 600  # seconds a browser may cache a preflight answer
    compress_json: int = 1  # 1: gzip or br JSON responses (QIDO, metadata) when accepted
    compress_min_bytes: int = 1024  # smaller JSON bodies are sent as they are
    # Python's cyclic garbage collector: objects allocated before a full collection runs. The
    # default (700) made a 1,400-study QIDO answer spend two thirds of its time in collections;
    # startup objects are also frozen out of collection (app.py). 0 keeps Python's default.
    gc_young_threshold: int = 20_000

    @property
    def root_url(self) -> str:
        """The absolute DICOMweb root, without a trailing slash."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/dicomweb"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then DICOMWEB_* variables, then explicit overrides (e.g. from the CLI)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(f"DICOMWEB_{field.name.upper()}")
            if raw is None:
                continue
            values[field.name] = _convert(field.name, field.type, raw)
        settings = cls(**values)
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **given) if given else settings


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if kind == "int":
            return int(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"DICOMWEB_{name.upper()} must be an integer, got {raw!r}") from exc
    return raw
