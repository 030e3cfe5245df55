"""Events: what changed in the store, as change feed entries and as signed CloudEvents.

Pure (no I/O). The index writes an `Event` in the transaction that makes the change (the
outbox); the change feed shows the instance events in Microsoft's DICOM change feed shape
(plus `Site`); webhooks receive every event a subscription matches as a CloudEvents 1.0
JSON document, signed like Stripe's webhooks: `Dicomweb-Signature: t=<unix>,v1=<hex>`, the
hex being HMAC-SHA256 of `<unix>.<body>` under the subscription's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from dicomweb_server.errors import BadRequestError

__all__ = [
    "CLOUDEVENTS_MEDIA_TYPE",
    "EVENT_TYPES",
    "FEED_TYPES",
    "INSTANCE_CREATED",
    "INSTANCE_DELETED",
    "SIGNATURE_HEADER",
    "STUDY_STABLE",
    "Event",
    "FeedEntry",
    "Webhook",
    "cloud_event",
    "feed_action",
    "feed_entry_json",
    "format_time",
    "parse_event_types",
    "parse_modalities",
    "parse_since",
    "parse_time",
    "sign",
    "verify_signature",
]

INSTANCE_CREATED = "instance.created"
INSTANCE_DELETED = "instance.deleted"
STUDY_STABLE = "study.stable"
EVENT_TYPES = (INSTANCE_CREATED, INSTANCE_DELETED, STUDY_STABLE)
# The change feed lists what happened to instances; study.stable goes to webhooks only.
FEED_TYPES = (INSTANCE_CREATED, INSTANCE_DELETED)
_ACTIONS = {INSTANCE_CREATED: "create", INSTANCE_DELETED: "delete"}
CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"
SIGNATURE_HEADER = "Dicomweb-Signature"
_TYPE_PREFIX = "org.dicomweb."
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox entry: `sequence` orders every event of the store, in commit order.

    Instance events name the instance; study.stable names the study and carries its counts.
    `modalities` are the instance's modality (its series'), or the study's modalities for
    study.stable, used to match subscriptions; `time` is Unix seconds, UTC.
    """

    sequence: int
    type: str
    site: str
    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    time: float
    modalities: frozenset[str] = frozenset()
    number_of_series: int | None = None
    number_of_instances: int | None = None


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """A change feed entry: an instance event and the state of its instance now.

    `state` is current (the instance this entry is about is stored), replaced (another
    instance with its SOP Instance UID is stored) or deleted. `metadata` is the stored
    DICOM JSON of a current instance when it was asked for.
    """

    event: Event
    state: str
    metadata: bytes | None = None


@dataclass(frozen=True, slots=True)
class Webhook:
    """A subscription: where to POST which events. The secret is never here: only the name of
    the environment variable that holds it, read at delivery time."""

    id: int
    url: str
    secret_env: str
    events: frozenset[str]
    site: str | None = None  # None: every site
    modalities: frozenset[str] = frozenset()  # empty: any modality
    allow_private: bool = False  # loopback, link-local and metadata addresses allowed
    created: float = 0.0

    def matches(self, event: Event) -> bool:
        """True when this subscription wants `event`."""
        if event.type not in self.events:
            return False
        if self.site is not None and event.site != self.site:
            return False
        return not self.modalities or bool(self.modalities & event.modalities)


def feed_action(event_type: str) -> str:
    """The change feed Action of an instance event type (create, delete)."""
    return _ACTIONS[event_type]


def format_time(timestamp: float) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds: `2024-05-10T16:00:00.123456Z`."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, what: str) -> float:
    """An ISO 8601 date-time (`Z` or an offset; none means UTC) as Unix seconds; 400 if not."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequestError(
            f"{what} {text[:40]!r} is not an ISO 8601 date-time (2024-05-10T16:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_since(text: str, now: float) -> float:
    """`--since`: an ISO 8601 date-time, or a duration back from `now` (`90s`, `15m`, `2h`,
    `7d`)."""
    duration = _DURATION.fullmatch(text.strip())
    if duration is not None:
        return now - float(duration.group(1)) * _UNITS[duration.group(2)]
    return parse_time(text, "since")


def parse_event_types(text: str) -> frozenset[str]:
    """`instance.created,study.stable` → the set; unknown names are a 400 naming them."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(EVENT_TYPES))
    if unknown or not names:
        raise BadRequestError(
            f"unknown event type(s) {', '.join(unknown) or '(none given)'};"
            f" choose from {', '.join(EVENT_TYPES)}"
        )
    return frozenset(names)


def parse_modalities(values: Iterable[str]) -> frozenset[str]:
    """Modality codes (CS: `CT`, `MR`), uppercased; anything else is a 400."""
    found = set()
    for value in values:
        for item in value.split(","):
            code = item.strip().upper()
            if not _MODALITY.fullmatch(code):
                raise BadRequestError(f"{item[:20]!r} is not a modality code (CT, MR, ...)")
            found.add(code)
    return frozenset(found)


def _entry_fields(event: Event) -> dict[str, object]:
    return {
        "Sequence": event.sequence,
        "Site": event.site,
        "StudyInstanceUid": event.study_instance_uid,
        "SeriesInstanceUid": event.series_instance_uid,
        "SopInstanceUid": event.sop_instance_uid,
    }


def feed_entry_json(entry: FeedEntry, metadata: bytes | None = None) -> bytes:
    """The entry as Microsoft's change feed writes it (plus `Site`); `metadata`, already
    JSON, is spliced in as is, so a page never parses stored DICOM JSON."""
    event = entry.event
    fields = {
        **_entry_fields(event),
        "Action": feed_action(event.type),
        "Timestamp": format_time(event.time),
        "State": entry.state,
    }
    body = orjson.dumps(fields)
    if metadata is None:
        return body
    return body[:-1] + b',"Metadata":' + metadata + b"}"


def _subject(event: Event) -> str:
    """The resource an event is about, relative to the source (the DICOMweb root)."""
    path = f"studies/{event.study_instance_uid}"
    if event.series_instance_uid is not None and event.sop_instance_uid is not None:
        path += f"/series/{event.series_instance_uid}/instances/{event.sop_instance_uid}"
    return path


def cloud_event(event: Event, source: str) -> bytes:
    """The CloudEvents 1.0 structured-mode JSON document of `event` (its `id`, the sequence,
    is the same on every delivery and replay: receivers deduplicate on it)."""
    data: dict[str, object]
    if event.type == STUDY_STABLE:
        data = {
            "Sequence": event.sequence,
            "Site": event.site,
            "StudyInstanceUid": event.study_instance_uid,
            "NumberOfStudyRelatedSeries": event.number_of_series,
            "NumberOfStudyRelatedInstances": event.number_of_instances,
            "ModalitiesInStudy": sorted(event.modalities),
        }
    else:
        data = {**_entry_fields(event), "Action": feed_action(event.type)}
    document = {
        "specversion": "1.0",
        "id": str(event.sequence),
        "source": source,
        "type": _TYPE_PREFIX + event.type,
        "time": format_time(event.time),
        "subject": _subject(event),
        "datacontenttype": "application/json",
        "data": data,
    }
    return orjson.dumps(document)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `Dicomweb-Signature` value: `t=<unix>,v1=<HMAC-SHA256 of "<unix>.<body>", hex>`."""
    digest = hmac.new(secret, b"%d.%s" % (timestamp, body), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now: float, tolerance: float = 300
) -> bool:
    """True when `header` signs `body` with `secret` and its time is within `tolerance`
    seconds of `now` (a captured delivery cannot be replayed later)."""
    try:
        fields = dict(part.strip().split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    fresh = abs(now - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))
