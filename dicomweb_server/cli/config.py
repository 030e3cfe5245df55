"""`dicomweb-server config`: every setting, its default and its value here (secrets masked).

`--markdown` prints the README's configuration table instead, made from the same two sources:
the `Settings` fields (names and defaults) and `ROWS` below (what each one means). A test fails
when README.md's table differs from it; `python tools/settings_table.py` rewrites it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dicomweb_server.config import ENV_PREFIX, Settings

__all__ = ["ROWS", "Row", "add_commands", "markdown_table", "masked", "settings_listing"]

_SECRET_WORDS = ("secret", "password", "token", "passwd")
_MASK = "****"
_MIB = 1 << 20
_KIB = 1 << 10


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the configuration table: settings documented together, and what they do."""

    names: tuple[str, ...]
    meaning: str
    default: str | None = None  # shown instead of the defaults (computed or empty ones)


ROWS: tuple[Row, ...] = (
    Row(("host", "port"), "where to listen"),
    Row(("data_dir",), "embedded store: `index.sqlite` and `objects/`"),
    Row(
        ("workers",),
        "uvicorn worker processes (0: one per CPU core; uvloop and httptools are used)",
    ),
    Row(
        ("accept_balance",),
        "with several workers, the worker serving the fewest connections accepts the next one (a worker waits 1 ms per connection it serves, at most 10 ms, before accepting), so a client's burst of keep-alive connections is spread over all of them (0: uvicorn's own accept, where one worker often takes a whole burst)",
    ),
    Row(
        ("base_url",),
        "public root used in RetrieveURL and BulkDataURI values (set it behind a proxy; the Host header is never trusted)",
    ),
    Row(
        ("log_level",),
        "log level of our loggers and uvicorn's: critical, error, warning, info, debug or trace",
    ),
    Row(
        ("log_format",),
        "`json`: one JSON object per line (time, level, logger, message, pid; request_id, method, path, status, duration_ms, site and user for request lines), ours and uvicorn's alike; query strings are never logged",
    ),
    Row(
        ("ssl_certfile", "ssl_keyfile"),
        "serve HTTPS only, with this PEM certificate chain and key (both or neither)",
    ),
    Row(("database_url",), "`postgresql://user:pass@host/db` or `sqlite:///path/to/index.sqlite`"),
    Row(("storage_url",), "`s3://bucket/prefix` or `file:///path/to/objects`"),
    Row(("s3_endpoint_url", "s3_region"), "S3-compatible endpoint and region"),
    Row(("s3_multipart_threshold", "s3_part_size"), "multipart upload threshold and part size"),
    Row(
        ("s3_read_connections",),
        "connections kept to the S3 endpoint for reads (presigned GETs), per process",
    ),
    Row(("database_pool_size",), "PostgreSQL connections per worker"),
    Row(
        ("sqlite_loop_read_max_ms",),
        "SQLite index: point reads (a frame's instance, a study's version) run on the event loop, skipping a thread hop that costs more than the read; one that waits off the CPU longer than this (a slow disk, a network file system) sends them to the reader threads for a minute (0: always on the threads)",
    ),
    Row(
        ("backend_timeout",),
        "seconds before a slow backend call becomes a 503 (for S3: each request, retries"
        " included, and each wait for more of a body)",
    ),
    Row(
        ("ready_timeout",),
        "seconds `/readyz` waits for each of the index and the object store before it answers 503 naming the one that did not answer",
    ),
    Row(("max_request_bytes",), "largest STOW body"),
    Row(("max_part_bytes",), "largest instance"),
    Row(("max_parts",), "instances per STOW request"),
    Row(
        ("max_boundary_length",),
        "longest multipart boundary a STOW request may use (RFC 2046 says 70, but Orthanc's DICOMweb plugin sends 73); longer is a 400",
    ),
    Row(("spool_memory_bytes",), "a part above this spools to disk"),
    Row(("store_pipeline_depth",), "parts of one STOW request parsed and written at once"),
    Row(("store_index_batch",), "stored instances indexed per transaction"),
    Row(
        ("store_held_memory_bytes",),
        "bytes of written parts one STOW request keeps in memory until they are indexed (to"
        " write again an object a racing purge deleted); past it, it indexes early",
    ),
    Row(("bulk_data_threshold",), "binary values above this many bytes become BulkDataURIs"),
    Row(("max_sequence_depth",), "deeper nesting is refused"),
    Row(("max_frames",), "NumberOfFrames above this is refused"),
    Row(("max_pixel_bytes",), "declared image size above this is refused"),
    Row(
        ("max_header_bytes",),
        "bytes of one instance parsed into memory (everything but bulk data; all of a deflated data set); more fails with 0xA700",
    ),
    Row(("body_timeout",), "seconds to wait for the next chunk of a request body; then 408"),
    Row(("request_timeout",), "seconds a request may run; then 408 (body unfinished) or 503"),
    Row(
        ("max_concurrent_stores",),
        "STOW requests in flight per process; more get 429 with Retry-After",
    ),
    Row(
        ("min_upload_rate",),
        "bytes per second a STOW body must average once `DICOMWEB_BODY_TIMEOUT` has passed; slower is a 408",
    ),
    Row(
        ("max_request_header_bytes", "max_request_headers"),
        "request header bytes and lines; more is a 431",
    ),
    Row(("header_timeout",), "seconds from a request's first byte to its last header; then 408"),
    Row(("keep_alive_timeout",), "seconds an idle kept-alive connection stays open"),
    Row(("max_connections",), "connections and requests per process (0: unbounded); more get 503"),
    Row(
        ("shutdown_grace_seconds",),
        "on SIGTERM, requests in flight get this long to finish; no new connections are accepted meanwhile, and the server exits 0",
    ),
    Row(
        ("codec_workers",),
        "threads for codec work per process (0: one per core). Codec calls are serialised by default: concurrent native codec calls crashed once under test; use `--workers` for parallelism",
    ),
    Row(
        ("frame_cache",),
        "0 stops caching transcoded frames and remuxed video in the blob store (video is then remuxed for every request)",
    ),
    Row(
        ("max_decoded_frame_bytes",),
        "bytes one decoded frame may take, checked against its header before any decoder runs; larger frames are served as stored",
    ),
    Row(
        ("max_render_pixels",),
        "frames × pixels one rendered answer may decode or produce; more is a 400. Renderings in flight share it too: past it they wait, then get 503",
    ),
    Row(
        ("cache_max_bytes",),
        "derived data (transcoded frames, thumbnails, remuxed video) kept in the blob store, all sites together; least recently used evicted past it (0: none kept)",
    ),
    Row(
        ("derived_memory_cache_bytes",),
        "of that, kept in memory per process too: a warm transcoded frame skips the object store",
    ),
    Row(
        ("frame_memory_cache_bytes",),
        "stored frames kept in memory per process when objects are in S3 (a local folder has the page cache): a frame asked for again skips the object store. `auto`: an eighth of the machine's memory (or the container's limit) shared by the workers, 64 MiB to 1 GiB each; 0: none",
    ),
    Row(
        ("frame_read_ahead_bytes",),
        "of those, a frames request streams in the frames after its own, up to this many bytes, by one ranged GET: the next asks of a viewer paging through a multi-frame object are answered from memory (at most an eighth of the memory; 0: none)",
    ),
    Row(
        ("metadata_memory_cache_bytes",),
        "study and series metadata answers kept in memory per process, by the study's version: a series opened again costs one small index query (0: none)",
    ),
    Row(
        ("wado_read_ahead_objects", "wado_read_ahead_bytes"),
        "objects (and bytes) of a study or series fetched ahead while one is sent",
    ),
    Row(
        ("wado_sized_max_instances",),
        "an as-stored study or series answer up to this many instances carries a Content-Length",
    ),
    Row(
        ("wado_zero_copy",),
        "`dicomweb-server serve` sends the stored files of such answers with sendfile, `DICOMWEB_WADO_READ_AHEAD_OBJECTS` files at a time, read ahead together (0: through the event loop)",
    ),
    Row(("default_query_limit", "max_query_limit"), "QIDO page size"),
    Row(
        ("qido_memory_cache_bytes",),
        "whole QIDO answers kept in memory per process: scoped to one study (its series, its instances, the study by its UID) by the study's version; on SQLite any other (a worklist) by the index's change count, until anything is stored or deleted (0: none)",
    ),
    Row(("max_query_offset",), "largest QIDO offset"),
    Row(
        ("max_query_values",),
        "values the matching keys of one search may list together (UID and code lists); more is a 400",
    ),
    Row(
        ("max_metadata_query_limit",),
        "largest QIDO page whose results take attributes from each instance's metadata (`includefield=all`, or a key no level stores); a larger `limit` is reduced, with a Warning",
    ),
    Row(("thumbnail_size",), "default thumbnail size, pixels a side"),
    Row(("thumbnail_cache",), "0 stops keeping thumbnails in the blob store"),
    Row(
        ("render_memory_cache_bytes",), "rendered images and thumbnails kept in memory per process"
    ),
    Row(("max_viewport",), "largest `viewport` width or height"),
    Row(
        ("http_cache_max_age",), "`Cache-Control: max-age` of instance images, frames and metadata"
    ),
    Row(("cors_origins",), "origins that may read, comma-separated (`*` any, empty none)"),
    Row(("cors_write_origins",), "origins that may also store from a browser"),
    Row(("cors_allow_headers",), "request headers a preflight may name"),
    Row(("cors_max_age",), "seconds a browser may cache a preflight"),
    Row(
        ("compress_json", "compress_min_bytes"),
        "gzip/br JSON responses when accepted, from this size",
    ),
    Row(
        ("compressed_memory_cache_bytes",),
        "compressed bytes of study and series metadata answers kept per process per encoding, so a series opened again is not compressed again (0: none)",
    ),
    Row(
        ("gc_young_threshold",),
        "allocations before Python's garbage collector runs (default 700 spent two thirds of a large search in collections); startup objects are frozen out of collection; 0 keeps Python's default",
    ),
    Row(
        ("default_site",),
        "the site STOW at `/dicomweb` stores into (created at start-up if missing)",
    ),
    Row(
        ("auth",),
        "access control: `none`, `oidc`, `apikey` or `oidc,apikey` (credentials accepted as Bearer; [Access control](#access-control))",
    ),
    Row(
        ("insecure_no_auth",),
        "1 lets `DICOMWEB_AUTH=none` serve a non-loopback address, where every caller may do everything (`serve --insecure-no-auth`)",
    ),
    Row(
        ("oidc_issuer", "oidc_audience"),
        "the identity provider's issuer URL and the audience a token must name (this server's client id)",
    ),
    Row(
        ("oidc_jwks_url",),
        "where the signing keys are (empty: `jwks_uri` of the issuer's OpenID configuration)",
    ),
    Row(
        ("oidc_grants_claim", "oidc_grant_prefix"),
        "the token claim with SITE:ROLE grants (dotted: nested) and the prefix grant entries carry",
    ),
    Row(
        ("oidc_algorithms",),
        "token signatures accepted, comma-separated (asymmetric only, never HS*)",
    ),
    Row(("oidc_leeway_seconds",), "clock skew allowed on a token's exp, nbf and iat"),
    Row(("max_token_bytes",), "a longer bearer token or API key is refused unread"),
    Row(
        ("delete_grace_days",),
        "days deleted and rejected instances stay restorable before maintenance deletes their objects",
    ),
    Row(
        ("maintenance_interval",),
        "seconds between maintenance runs (purge, retention), one process at a time; 0: never",
    ),
    Row(("retention_batch",), "studies one maintenance run expires per site, at most"),
    Row(
        ("audit_rollup_seconds",),
        "a user's image reads of one study within this time are one audit record (0: one per request)",
    ),
    Row(("audit_retention_days",), "audit records are kept this long (7 years)"),
    Row(
        ("audit_queue_limit", "audit_batch_size", "audit_flush_seconds"),
        "audit events waiting to be written (more are dropped and counted), records per write, longest wait between writes",
    ),
    Row(
        ("audit_expiry_interval_seconds",),
        "how often each process tries the retention expiry",
    ),
    Row(("audit_source_id",), "how audit records name this server", "(the root URL)"),
    Row(
        ("audit_syslog_url",),
        "also send audit messages to an ATNA repository: `udp://`, `tcp://` or `tls://host:port`",
    ),
    Row(
        ("audit_syslog_ca_file", "audit_syslog_certfile", "audit_syslog_keyfile"),
        "`tls://`: the CA bundle to trust (empty: the system's), this server's client certificate and its key (empty: in the certificate file)",
    ),
    Row(
        ("audit_syslog_queue_limit",),
        "unsent syslog messages kept; older ones are dropped",
    ),
    Row(
        ("qido_scan_timeout",),
        "seconds a search on attributes without an index column (matched in stored DICOM JSON) may scan before it stops with a `413` asking for a narrower query",
    ),
    Row(
        ("study_stable_seconds",),
        "a study with no new instance this long gets one `study.stable` event",
    ),
    Row(("webhook_timeout",), "seconds a webhook receiver may take to answer a delivery"),
    Row(("webhook_max_age",), "seconds a delivery is retried before it is dead-lettered"),
    Row(
        ("webhook_retry_seconds",),
        "first retry delay, doubled per attempt (with jitter), at most an hour",
    ),
    Row(("webhook_concurrency",), "webhook deliveries in flight per process"),
    Row(
        ("webhook_allow_private",),
        "1 lets every webhook target loopback, link-local and metadata addresses",
    ),
    Row(
        ("events_poll_seconds",),
        "how often each process looks for quiet studies, new events and due deliveries",
    ),
    Row(
        ("import_max_member_bytes",),
        "`import`: largest expanded size of one archive member, as declared and as read (zip bombs)",
    ),
    Row(
        ("import_max_archive_bytes",),
        "`import`: largest expanded size of one whole archive; a tar stream stops there",
    ),
    Row(
        ("import_spool_memory_bytes",),
        "`import`, `reindex`: a file up to this size is read into memory in one read (per instance in flight); larger ones spool through a temp file",
    ),
    Row(
        ("tracing",),
        "OpenTelemetry traces (needs the `tracing` extra); also on when `OTEL_TRACES_EXPORTER` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and configured by the standard `OTEL_*` variables",
    ),
    Row(
        ("viewer_dir",),
        "where `dicomweb-server viewer install` puts the OHIF Viewer that `/viewer/` serves",
    ),
)

# What an empty default means, for the table
_EMPTY = {
    "base_url": "`http://{host}:{port}/dicomweb`",
    "database_url": "(embedded)",
    "storage_url": "(embedded)",
    "s3_endpoint_url": "(AWS)",
    "s3_region": "(AWS)",
    "ssl_certfile": "(none)",
    "ssl_keyfile": "(none)",
    "cors_write_origins": "(none)",
    "cors_allow_headers": "(any asked)",
    "oidc_issuer": "(none)",
    "oidc_audience": "(none)",
    "oidc_jwks_url": "(discovered)",
    "oidc_grant_prefix": "(none)",
    "viewer_dir": "`{data_dir}/viewer`",
    "audit_syslog_url": "(none)",
    "audit_syslog_ca_file": "(system)",
    "audit_syslog_certfile": "(none)",
    "audit_syslog_keyfile": "(none)",
}


def _human(name: str, value: Any) -> str:
    """A default as the table shows it: sizes in MiB/GiB, booleans as 1/0, text in code."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        sized = name.endswith("_bytes") or "_size" in name or "threshold" in name
        if sized and value >= _MIB and value % _MIB == 0:
            return f"{value >> 30} GiB" if value % (1 << 30) == 0 else f"{value >> 20} MiB"
        if name.endswith(("_bytes", "_rate")) and value >= 64 * _KIB and value % _KIB == 0:
            return f"{value >> 10} KiB"
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    if not text:
        return _EMPTY.get(name, "(empty)")
    return f"`{text}`"


def markdown_table() -> str:
    """The README's configuration table, from `Settings` and `ROWS`."""
    fields = Settings.model_fields
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for row in ROWS:
        variables = " / ".join(f"`{ENV_PREFIX}{name.upper()}`" for name in row.names)
        default = row.default or " / ".join(
            _human(name, fields[name].default) for name in row.names
        )
        lines.append(f"| {variables} | {default} | {row.meaning} |")
    return "\n".join(lines) + "\n"


def masked(name: str, value: Any) -> str:
    """A setting's value for printing: secrets and URL passwords replaced by ****."""
    text = str(value)
    if not text:
        return ""
    if any(word in name.lower() for word in _SECRET_WORDS) and isinstance(value, str):
        return _MASK
    if "://" in text:
        return _masked_url(text)
    return text


def _masked_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rsplit("@", 1)[1]
            netloc = f"{user}:{_MASK}@{host}"
        query = urlencode(
            [
                (key, _MASK if any(w in key.lower() for w in _SECRET_WORDS) else value)
                for key, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return _MASK  # not a URL we can read: show nothing of it


# Values worked out from the machine: the listing shows what they come to here
_RESOLVED: dict[str, Callable[[Settings], str]] = {
    "frame_memory_cache_bytes": lambda s: f"{s.frame_memory_bytes()} per worker here",
}


def settings_listing(settings: Settings) -> list[tuple[str, str, str, bool]]:
    """(variable, default, value, changed) for every setting, masked."""
    listing = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        default = field.default
        shown = masked(name, value)
        if value == "auto" and name in _RESOLVED:
            shown = f"auto: {_RESOLVED[name](settings)}"
        listing.append(
            (
                ENV_PREFIX + name.upper(),
                masked(name, default) or _EMPTY.get(name, "").strip("`"),
                shown,
                value != default,
            )
        )
    return listing


def add_commands(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print every setting, its default and its value here (secrets masked)",
        description=(
            "Every DICOMWEB_* setting with its default and the value this environment gives it"
            " (* marks a changed one). Passwords in URLs and settings named like secrets are"
            " masked."
        ),
    )
    config.add_argument(
        "--markdown",
        action="store_true",
        help="print the README's configuration table (generated from the settings)",
    )
    config.set_defaults(run=_config)


def _config(settings: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    listing = settings_listing(settings)
    width = max(len(name) for name, *_ in listing)
    shown = max(len(default) for _, default, *_ in listing)
    print(f"  {'VARIABLE':<{width}}  {'DEFAULT':<{shown}}  VALUE")
    for name, default, value, changed in listing:
        mark = "*" if changed else " "
        print(f"{mark} {name:<{width}}  {default:<{shown}}  {value}".rstrip())
    return 0


_TABLE = re.compile(
    r"(<!-- settings-table:start.*?-->\n)(.*?)(<!-- settings-table:end -->)", re.DOTALL
)


def readme_table(readme: Path) -> str | None:
    """The table README.md has between its settings-table markers, or None without them."""
    found = _TABLE.search(readme.read_text())
    return None if found is None else found.group(2)


def write_readme_table(readme: Path) -> bool:
    """Put the generated table between the markers; True when the file changed."""
    text = readme.read_text()
    updated = _TABLE.sub(lambda m: m.group(1) + markdown_table() + m.group(3), text, count=1)
    if updated != text:
        readme.write_text(updated)
    return updated != text
