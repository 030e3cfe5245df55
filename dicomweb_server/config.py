"""A frozen `Settings`, read from DICOMWEB_* environment variables; every limit is named here.

`Settings(...)` holds exactly what it is given (tests and tools build it in code);
`Settings.from_env()` reads DICOMWEB_<FIELD> variables as well, the way `serve` and every CLI
command do. Booleans take true/false/yes/no/on/off/1/0; a bad value is a `SettingsError` whose
message is one readable line naming the variable.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "SettingsError",
    "machine_memory_bytes",
    "unknown_variables",
]

ENV_PREFIX = "DICOMWEB_"
# Variables of ours that are not server settings (test, conformance and bench harnesses, and
# the webhook secrets README names for `webhook add --secret-env`).
_AUXILIARY_PREFIXES = (
    "DICOMWEB_TEST_",
    "DICOMWEB_CONFORMANCE_",
    "DICOMWEB_BENCH_",
    "DICOMWEB_WEBHOOK_SECRET",
)

Positive = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LogFormat = Literal["text", "json"]
# Credentials DICOMWEB_AUTH may combine, in their canonical order
_AUTH_METHODS = ("oidc", "apikey")
# Asymmetric JWS algorithms only: an HS* token could be signed with the IdP's public key
_OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_LOOPBACK_NAMES = ("localhost",)
# An origin as a browser sends it: scheme://host[:port], no path
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\],]+)(:[0-9]{1,5})?")


class SettingsError(ValueError):
    """A setting that cannot be used; the message is one line naming its variable."""


class Settings(BaseSettings):
    """Server configuration; each field is also DICOMWEB_<FIELD_NAME_UPPER> in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    workers: NonNegative = 0  # uvicorn worker processes; 0: one per CPU core
    # With several workers, the one serving fewest connections accepts first (serve/balance.py)
    accept_balance: bool = True
    data_dir: Path = Path("data")
    # Public URL of the DICOMweb root, used in RetrieveURL and BulkDataURI values.
    # Empty: http(s)://{host}:{port}/dicomweb (never the request's Host header alone).
    base_url: str = ""
    log_level: LogLevel = "info"
    # The site STOW-RS at the DICOMweb root stores into, and whose copy the root serves first
    # when several sites hold a study UID (issue 16; created at start-up if missing)
    default_site: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "default"
    # TLS: both files given, the server speaks HTTPS only (PEM certificate chain and key)
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    # Backends: empty means the embedded pair under data_dir.
    database_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_multipart_threshold: Positive = 8 << 20  # objects above this upload in parts
    s3_part_size: Annotated[int, Field(ge=5 << 20)] = 8 << 20  # S3's minimum is 5 MiB
    s3_read_connections: Positive = 64  # connections kept to the S3 endpoint for reads
    database_pool_size: Positive = 10  # PostgreSQL connections per worker process
    # SQLite: point reads (a frame's instance, a study's version) run on the event loop,
    # skipping a thread hop that costs more than the read; one that waits off the CPU longer
    # than this many milliseconds (a slow disk, a network file system) sends them to the
    # reader threads for a minute (0: always on the threads)
    sqlite_loop_read_max_ms: Annotated[float, Field(ge=0)] = 25.0
    backend_timeout: Positive = 30  # seconds before a slow index or store call becomes a 503

    # STOW-RS limits
    max_request_bytes: Positive = 8 << 30  # a whole STOW body
    max_part_bytes: Positive = 4 << 30  # one instance
    max_parts: Positive = 10_000  # instances per request
    # Multipart boundary characters (RFC 2046 says 70; Orthanc's STOW client sends 73)
    max_boundary_length: Annotated[int, Field(ge=70)] = 256
    spool_memory_bytes: NonNegative = 4 << 20  # a part above this spools to disk
    # Parts of one request parsed and written at once, each holding its spool (memory or disk):
    # one instance's fsync or upload overlaps the next one's parsing.
    store_pipeline_depth: Positive = 4
    store_index_batch: Positive = 50  # written instances indexed per transaction (one commit)
    # A request keeps its written parts' bytes until they are indexed (to write an object
    # again that a racing purge deleted): past this many in memory, it indexes early.
    store_held_memory_bytes: Positive = 64 << 20
    # Part 10 parsing limits
    bulk_data_threshold: Positive = 1024  # binary values above this become BulkDataURIs
    max_sequence_depth: Positive = 64
    max_frames: Positive = 100_000
    max_pixel_bytes: Positive = 4 << 30
    max_header_bytes: Positive = 64 << 20  # Part 10 bytes parsed into memory per instance
    # QIDO-RS limits
    default_query_limit: Positive = 1000
    max_query_limit: Positive = 10_000
    max_query_offset: NonNegative = 10_000_000
    # Values all matching keys of one search list together (UID and code lists): each is
    # one SQL parameter, and a URL may hold thousands
    max_query_values: Positive = 1000
    # Page size when results carry attributes from each instance's metadata (includefield=all
    # or a key no level stores): one metadata read per result, held until the answer is sent
    max_metadata_query_limit: Positive = 1000
    # QIDO-RS on attributes without an index column (issue 15): they are matched in stored
    # DICOM JSON, which may scan every row; past this many seconds such a search stops with a
    # 413 asking for a narrower query (PostgreSQL statement_timeout, SQLite progress handler).
    qido_scan_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Request bounds against slow or many clients (hostile input hardening)
    max_request_header_bytes: Annotated[int, Field(ge=4096)] = 64 << 10  # else 431
    max_request_headers: Positive = 100  # header lines per request, else 431
    header_timeout: Positive = (
        15  # seconds from a request's first byte to its last header, else 408
    )
    keep_alive_timeout: Positive = 15  # seconds an idle kept-alive connection stays open
    max_connections: NonNegative = 2000  # connections and requests per process (0: unbounded); 503
    shutdown_grace_seconds: NonNegative = 30  # requests in flight may finish this long on SIGTERM
    body_timeout: Positive = 60  # seconds to wait for the next chunk of a request body, else 408
    # A STOW body must arrive at this average rate once body_timeout has passed, else 408: one
    # byte a minute would otherwise hold a STOW slot for the whole request_timeout
    min_upload_rate: NonNegative = 64 << 10
    request_timeout: Positive = 3600  # seconds a request may run before it is cut off
    max_concurrent_stores: Positive = 8  # STOW requests in flight per process; more get 429
    # WADO-RS transcoding and rendering
    # Threads for codec work per process (0 = one per core). Default 1: a full test run crashed
    # once in native code with concurrent transcodes, so codec calls are serialised per process
    # until the codecs move to a crash-isolated process pool; scale with --workers instead.
    codec_workers: NonNegative = 1
    frame_cache: bool = True  # keep transcoded frames in the blob store under {site}/cache/
    # Bytes one decoded frame may take; checked against the frame's own header before any
    # decoder runs (a 7 KB JPEG can declare 30000×30000). Larger frames are served as stored.
    max_decoded_frame_bytes: Positive = 512 << 20
    # Frames × pixels one rendered answer may decode or produce (an animated GIF of 256 frames
    # at 4096×4096 took 12.8 GB): past it, a 400 naming the limit.
    max_render_pixels: Positive = 1 << 28
    # Derived data (transcoded frames, thumbnails) kept in the blob store, all sites together;
    # past it the least recently used entries are evicted (services/derived_cache.py)
    cache_max_bytes: NonNegative = 4 << 30
    # Of that, kept in memory per process too (warm transcoded frames skip the object store)
    derived_memory_cache_bytes: NonNegative = 64 << 20
    # Stored frames read from an S3 store, kept in memory per process (a local folder has the
    # page cache): a frame asked for again (another viewer, a scroll back) skips the store.
    # "auto": an eighth of the machine's (or its container's) memory shared by the worker
    # processes, 64 MiB to 1 GiB each (frame_memory_bytes)
    frame_memory_cache_bytes: NonNegative | Literal["auto"] = "auto"
    # Of those, a frames request streams in the frames after its own, up to this many bytes,
    # by one ranged GET (a viewer asks for a multi-frame object's frames nearly in order)
    frame_read_ahead_bytes: NonNegative = 4 << 20
    # Study and series metadata answers kept in memory per process, by the study's version (a
    # viewer opening a series again is answered after one small index query)
    metadata_memory_cache_bytes: NonNegative = 64 << 20
    # Whole QIDO answers kept in memory per process: scoped to one study (its series, its
    # instances, the study by its UID) by the study's version, like metadata; on SQLite any
    # other (a worklist) by the index's change count, until anything is stored or deleted
    qido_memory_cache_bytes: NonNegative = 32 << 20
    # WADO-RS streaming: the next objects are fetched while the current one is sent
    wado_read_ahead_objects: Positive = 8  # objects fetched ahead per response (1: none ahead)
    wado_read_ahead_bytes: NonNegative = 16 << 20  # bytes held ahead per response
    # A study or series of at most this many instances is listed before its first byte, so an
    # answer sent as stored carries a Content-Length (no chunked framing, one copy less)
    wado_sized_max_instances: NonNegative = 2000
    # Stored files in such answers are sent by the kernel (sendfile) when `dicomweb-server
    # serve` runs on a uvicorn it supports (serve/zerocopy.py) without TLS
    wado_zero_copy: bool = True
    # Rendered resources and thumbnails (PS3.18 10.4.1.1.3, 8.3.5)
    thumbnail_size: Positive = 128  # default thumbnail viewport, pixels a side
    thumbnail_cache: bool = True  # keep thumbnails in the blob store under {site}/cache/
    render_memory_cache_bytes: NonNegative = 32 << 20  # rendered images kept in memory
    max_viewport: Positive = 4096  # largest viewport width or height a request may ask for
    http_cache_max_age: NonNegative = 3600  # Cache-Control max-age of instance answers
    # Browsers: CORS and compression
    cors_origins: str = "*"  # origins that may read, comma-separated ("*": any, "": none)
    cors_write_origins: str = ""  # origins that may also store (POST); same syntax
    cors_allow_headers: str = ""  # request headers a preflight may name ("": any it asks for)
    cors_max_age: NonNegative = 600  # seconds a browser may cache a preflight answer
    compress_json: bool = True  # gzip or br JSON responses (QIDO, metadata) when accepted
    compress_min_bytes: NonNegative = 1024  # smaller JSON bodies are sent as they are
    # Compressed bytes of whole JSON answers tagged by their content (study and series
    # metadata), kept per process per encoding: a series opened again is not compressed again
    compressed_memory_cache_bytes: NonNegative = 32 << 20
    # Python's cyclic garbage collector: objects allocated before a full collection runs. The
    # default (700) made a 1,400-study QIDO answer spend two thirds of its time in collections;
    # startup objects are also frozen out of collection (serve/worker.py). 0: Python's default.
    gc_young_threshold: NonNegative = 20_000
    # Correcting and removing data (issue 18; services/delete.py, services/retention.py).
    # Deleted and rejected instances stay restorable this many days; then maintenance deletes
    # their objects (`dicomweb-server purge` does it at once)
    delete_grace_days: NonNegative = 7
    # Seconds between maintenance runs (purge past the grace period, site retention), in one
    # server process at a time across workers and machines (a lease in the index); 0: never
    maintenance_interval: NonNegative = 3600
    retention_batch: Positive = 100  # studies one maintenance run expires per site, at most
    # Access control (services/authn.py). none: every caller may do everything (loopback only)
    auth: str = "none"  # none, oidc, apikey or oidc,apikey: credentials accepted as Bearer
    # DICOMWEB_AUTH=none on a non-loopback address: every caller may do everything
    insecure_no_auth: bool = False
    oidc_issuer: str = ""  # the identity provider's issuer URL; a token's iss must equal it
    oidc_audience: str = ""  # the aud a token must name (this server's client id at the IdP)
    oidc_jwks_url: str = ""  # empty: jwks_uri of {issuer}/.well-known/openid-configuration
    oidc_grants_claim: str = "dicomweb_grants"  # claim with SITE:ROLE grants; dotted: nested
    oidc_grant_prefix: str = ""  # only claim entries with this prefix are grants ("dicomweb:")
    oidc_algorithms: str = "RS256,ES256,PS256"  # signatures accepted, comma-separated; never HS*
    oidc_leeway_seconds: NonNegative = 60  # clock skew allowed on a token's exp, nbf and iat
    max_token_bytes: Positive = 8192  # a longer bearer token or API key is refused unread
    # Audit trail (issue 17, services/audit.py): who read or changed which patient's data
    audit_queue_limit: Positive = 10_000  # events awaiting the writer; more are dropped, counted
    audit_batch_size: Positive = 200  # records written per transaction (a full batch wakes it)
    audit_flush_seconds: Annotated[float, Field(gt=0)] = 1.0  # the writer's longest wait
    # A user's image reads of one study (metadata, frames, rendered, thumbnails, bulk data)
    # within this many seconds become one "view" record with counts; 0: a record per request
    audit_rollup_seconds: NonNegative = 300
    audit_retention_days: Positive = 2555  # records are kept this long (7 years), then expired
    audit_expiry_interval_seconds: Positive = 3600  # how often each process tries the expiry
    audit_source_id: str = ""  # AuditSourceID and FHIR source.observer; empty: the root URL
    # Copies to an IHE ATNA repository: udp://host:514, tcp://host:601 or tls://host:6514
    audit_syslog_url: str = ""
    audit_syslog_ca_file: str = ""  # tls://: the CA bundle to trust (empty: the system's)
    audit_syslog_certfile: str = ""  # tls://: this server's client certificate (mutual TLS)
    audit_syslog_keyfile: str = ""  # tls://: its private key (empty: in the certificate file)
    audit_syslog_queue_limit: Positive = 10_000  # unsent syslog messages kept; older dropped
    # Events: the change feed and webhooks (services/events.py, services/webhook_delivery.py).
    # Every server process delivers, coordinated through the index: nothing else to run.
    study_stable_seconds: PositiveFloat = 60.0  # no new instance this long: one study.stable
    webhook_timeout: PositiveFloat = 10.0  # seconds a receiver may take to answer a delivery
    webhook_max_age: Positive = 86_400  # seconds a delivery is retried, then dead-lettered
    webhook_retry_seconds: PositiveFloat = 2.0  # first retry; doubled each time (jittered), ≤ 1 h
    webhook_concurrency: Positive = 8  # deliveries in flight per process
    # Let every webhook target loopback, link-local and cloud metadata addresses (refused
    # otherwise, unless the webhook was added with --allow-private)
    webhook_allow_private: bool = False
    events_poll_seconds: PositiveFloat = 1.0  # how often each process looks for work to do
    # Bulk import (dicomweb-server import): zip bombs are stopped by the expanded size of one
    # archive member and of a whole archive, checked against the declared sizes and counted
    # while reading; files up to the spool bound are read in one read and kept in memory.
    import_max_member_bytes: Positive = 4 << 30
    import_max_archive_bytes: Positive = 64 << 30
    import_spool_memory_bytes: NonNegative = 16 << 20
    # Operations (issue 21): probes, logs, traces, the viewer
    ready_timeout: Annotated[float, Field(gt=0)] = 2.0  # /readyz: seconds each backend may take
    log_format: LogFormat = "text"  # json: one JSON object per line, for log collectors
    # OpenTelemetry traces (serve/tracing.py); also on when OTEL_TRACES_EXPORTER or
    # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set. The OTEL_* variables configure the rest.
    tracing: bool = False
    viewer_dir: str = ""  # the installed OHIF Viewer (`viewer install`); empty: {data_dir}/viewer

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("auth", mode="before")
    @classmethod
    def _canonical_auth(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        names = {name.strip().lower() for name in value.split(",")} - {""}
        if names == {"none"}:
            return "none"
        if not names or not names <= set(_AUTH_METHODS):
            raise ValueError("must be none, oidc, apikey or oidc,apikey")
        return ",".join(name for name in _AUTH_METHODS if name in names)

    @field_validator("audit_syslog_url")
    @classmethod
    def _syslog_url(cls, value: str) -> str:
        if value and not re.fullmatch(
            r"(udp|tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+)(:[0-9]{1,5})?/?", value.strip()
        ):
            raise ValueError("must be udp://host[:port], tcp://host[:port] or tls://host[:port]")
        return value.strip()

    @field_validator("base_url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = urlsplit("")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must have no query or fragment")
        return value

    @field_validator("cors_origins", "cors_write_origins")
    @classmethod
    def _origin_list(cls, value: str) -> str:
        for item in (item.strip().rstrip("/") for item in value.split(",")):
            if item and item != "*" and not _ORIGIN.fullmatch(item):
                raise ValueError(
                    "must be *, empty or comma-separated origins like https://viewer.example.org"
                )
        return value

    @field_validator("oidc_algorithms", mode="before")
    @classmethod
    def _known_algorithms(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        names = [name.strip().upper() for name in value.split(",") if name.strip()]
        if not names or not set(names) <= set(_OIDC_ALGORITHMS):
            raise ValueError(f"must name some of {', '.join(_OIDC_ALGORITHMS)}")
        return ",".join(dict.fromkeys(names))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`Settings(...)` is what it is given; `from_env` adds the environment."""
        return (init_settings,)

    @property
    def tls(self) -> bool:
        """True when the server speaks HTTPS."""
        return bool(self.ssl_certfile)

    @property
    def viewer_path(self) -> Path:
        """Where `dicomweb-server viewer install` puts the viewer and the server finds it."""
        return Path(self.viewer_dir) if self.viewer_dir else self.data_dir / "viewer"

    @property
    def auth_methods(self) -> frozenset[str]:
        """The credentials accepted (`oidc`, `apikey`); empty when DICOMWEB_AUTH is none."""
        return frozenset() if self.auth == "none" else frozenset(self.auth.split(","))

    @property
    def audit_source(self) -> str:
        """How audit records name this server (AuditSourceID, FHIR source.observer)."""
        return self.audit_source_id or self.root_url

    @property
    def root_url(self) -> str:
        """The absolute DICOMweb root, without a trailing slash."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/dicomweb"

    def worker_count(self) -> int:
        """Worker processes `serve` starts: `workers`, or one per core."""
        return self.workers if self.workers > 0 else os.cpu_count() or 1

    def frame_memory_bytes(self, memory: int | None = None) -> int:
        """Bytes of stored frames each process keeps (`frame_memory_cache_bytes`, resolved).

        "auto" scales with the machine the way the embedded pair's page cache does, bounded
        below by what the frames of a few open series take and above so that a process stays
        small next to the others: an eighth of `memory` (default: the machine's, or the
        container's limit if lower) divided among the workers.
        """
        if self.frame_memory_cache_bytes != "auto":
            return self.frame_memory_cache_bytes
        total = machine_memory_bytes() if memory is None else memory
        share = total // _FRAME_MEMORY_SHARE // self.worker_count()
        return min(max(share, _FRAME_MEMORY_MIN), _FRAME_MEMORY_MAX)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then DICOMWEB_* variables, then explicit overrides (None: not given)."""
        given = {name: value for name, value in overrides.items() if value is not None}
        try:
            return cls(**{**_EnvSettings(**given).model_dump(), **given})
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied and validated."""
        try:
            return type(self)(**{**self.model_dump(), **changes})
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    def check(self) -> None:
        """Raise SettingsError for combinations no single field can judge."""
        self.check_auth()
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise SettingsError(
                "DICOMWEB_SSL_CERTFILE and DICOMWEB_SSL_KEYFILE must be given together"
            )
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise SettingsError(f"DICOMWEB_{name.upper()} {path!r} is not a readable file")
        if self.ssl_certfile:
            self._check_certificate()
        if self.default_query_limit > self.max_query_limit:
            raise SettingsError(
                "DICOMWEB_DEFAULT_QUERY_LIMIT must not exceed DICOMWEB_MAX_QUERY_LIMIT"
            )

    def _check_certificate(self) -> None:
        """Load the certificate chain and key as uvicorn will, so a file that is not a PEM
        certificate or key (or a key that does not match) is one line before any worker is
        forked, not a traceback in each worker started over and over."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(
                f"DICOMWEB_SSL_CERTFILE {self.ssl_certfile!r} and DICOMWEB_SSL_KEYFILE"
                f" {self.ssl_keyfile!r} are not a PEM certificate chain and its key:"
                f" {getattr(exc, 'reason', None) or exc}"
            ) from None

    def check_auth(self) -> None:
        """Raise SettingsError for access-control settings that cannot work together.

        OIDC needs an issuer and an audience. DICOMWEB_AUTH=none gives every caller every grant,
        so it is refused unless the server listens on a loopback address only.
        """
        if "oidc" in self.auth_methods:
            for name in ("oidc_issuer", "oidc_audience"):
                if not getattr(self, name):
                    raise SettingsError(f"DICOMWEB_AUTH={self.auth} needs DICOMWEB_{name.upper()}")
        if self.auth == "none" and not _is_loopback(self.host) and not self.insecure_no_auth:
            raise SettingsError(
                f"DICOMWEB_AUTH=none (no access control) needs a loopback DICOMWEB_HOST,"
                f" got {self.host!r}: set DICOMWEB_AUTH to oidc, apikey or oidc,apikey"
                " (or serve --insecure-no-auth to accept every caller)"
            )


class _EnvSettings(Settings):
    """Settings read from the process environment (and explicit values given)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


_FRAME_MEMORY_SHARE = 8  # "auto" frame memory: this fraction of memory, for all workers
_FRAME_MEMORY_MIN = 64 << 20  # per worker, at least (a few series of CT slices)
_FRAME_MEMORY_MAX = 1 << 30  # per worker, at most
# Where a container's memory limit is (cgroup v2, then v1); absent or "max": no limit
_CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def machine_memory_bytes(limits: tuple[Path, ...] = _CGROUP_MEMORY_LIMITS) -> int:
    """The physical memory of this machine, or its container's limit if that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) is no limit; v1 says so with a huge number
            total = min(total, int(text))
    return total


def _is_loopback(host: str) -> bool:
    """True for a loopback address or `localhost` (never for 0.0.0.0, :: or a name)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each DICOMWEB_* variable that names no setting, with the closest one."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    warnings = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if upper.startswith(_AUXILIARY_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


_MESSAGES = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_parsing": "must be true or false (or 1/0, yes/no, on/off)",
    "path_type": "must be a path",
}


def _one_line(exc: ValidationError) -> str:
    """The first problem of a validation error, as `DICOMWEB_NAME must be ..., got 'x'`."""
    errors = exc.errors()
    error = errors[0]
    name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else ENV_PREFIX
    kind = error["type"]
    alternatives = [e for e in errors[1:] if e["loc"][:1] == error["loc"][:1]]
    if alternatives and alternatives[0]["type"] == "literal_error":  # a number or a word
        message = _MESSAGES.get(kind) or error["msg"].replace("Input should", "must")
        expected = alternatives[0].get("ctx", {}).get("expected", "")
        return f"{name} {message} (or {expected}), got {error.get('input')!r}"
    if kind == "extra_forbidden":
        return f"{name} is not a setting"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected}"
    else:
        message = _MESSAGES.get(kind) or error["msg"].replace("Input should", "must").replace(
            "Value error, ", ""
        )
    return f"{name} {message}, got {error.get('input')!r}"
