"""domain/events.py (issue 20): feed entries, CloudEvents, signatures, filters, parsing."""

from __future__ import annotations

import hashlib
import hmac
import random

import orjson
import pytest

from dicomweb_server.domain.events import (
    INSTANCE_CREATED,
    INSTANCE_DELETED,
    STUDY_STABLE,
    Event,
    FeedEntry,
    Webhook,
    cloud_event,
    feed_action,
    feed_entry_json,
    format_time,
    parse_event_types,
    parse_modalities,
    parse_since,
    parse_time,
    sign,
    verify_signature,
)
from dicomweb_server.errors import BadRequestError
from dicomweb_server.index.events import DueHead, fair_heads
from dicomweb_server.services.webhook_delivery import retry_delay

CREATED = Event(7, INSTANCE_CREATED, "default", "1.2", "1.2.3", "1.2.3.4", 0.5, frozenset({"CT"}))
STABLE = Event(9, STUDY_STABLE, "east", "1.2", None, None, 60.0, frozenset({"MR", "CT"}), 2, 30)


def test_issue20_feed_entry_has_microsofts_fields_plus_site() -> None:
    entry = orjson.loads(feed_entry_json(FeedEntry(CREATED, "current")))
    assert entry == {
        "Sequence": 7,
        "Site": "default",
        "StudyInstanceUid": "1.2",
        "SeriesInstanceUid": "1.2.3",
        "SopInstanceUid": "1.2.3.4",
        "Action": "create",
        "Timestamp": "1970-01-01T00:00:00.500000Z",
        "State": "current",
    }
    with_metadata = orjson.loads(feed_entry_json(FeedEntry(CREATED, "current"), b'{"a":1}'))
    assert with_metadata["Metadata"] == {"a": 1}
    assert feed_action(INSTANCE_DELETED) == "delete"


def test_issue20_cloud_events_are_structured_json_with_a_stable_id() -> None:
    created = orjson.loads(cloud_event(CREATED, "https://pacs/dicomweb"))
    assert created == {
        "specversion": "1.0",
        "id": "7",
        "source": "https://pacs/dicomweb",
        "type": "org.dicomweb.instance.created",
        "time": "1970-01-01T00:00:00.500000Z",
        "subject": "studies/1.2/series/1.2.3/instances/1.2.3.4",
        "datacontenttype": "application/json",
        "data": {
            "Sequence": 7,
            "Site": "default",
            "StudyInstanceUid": "1.2",
            "SeriesInstanceUid": "1.2.3",
            "SopInstanceUid": "1.2.3.4",
            "Action": "create",
        },
    }
    stable = orjson.loads(cloud_event(STABLE, "s"))
    assert stable["type"] == "org.dicomweb.study.stable"
    assert stable["subject"] == "studies/1.2"
    assert stable["data"] == {
        "Sequence": 9,
        "Site": "east",
        "StudyInstanceUid": "1.2",
        "NumberOfStudyRelatedSeries": 2,
        "NumberOfStudyRelatedInstances": 30,
        "ModalitiesInStudy": ["CT", "MR"],
    }


def test_issue20_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"7"}'
    header = sign(b"s3cret", 1700000000, body)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(b"s3cret", header, body, now=1700000100)
    assert not verify_signature(b"s3cret", header, body, now=1700000400)  # too old
    assert not verify_signature(b"other", header, body, now=1700000000)
    assert not verify_signature(b"s3cret", header, body + b" ", now=1700000000)
    assert not verify_signature(b"s3cret", "v1=abc", body, now=1700000000)
    assert not verify_signature(b"s3cret", "garbage", body, now=1700000000)
    assert not verify_signature(b"s3cret", "t=1700000000", body, now=1700000000)


def test_issue20_webhook_filters_by_type_site_and_modality() -> None:
    every = Webhook(1, "http://x/", "V", frozenset({INSTANCE_CREATED, STUDY_STABLE}))
    assert every.matches(CREATED) and every.matches(STABLE)
    assert not every.matches(Event(8, INSTANCE_DELETED, "default", "1.2", "1", "2", 0.0))
    east = Webhook(2, "http://x/", "V", frozenset({INSTANCE_CREATED, STUDY_STABLE}), site="east")
    assert east.matches(STABLE) and not east.matches(CREATED)  # CREATED is of site default
    mr = Webhook(3, "http://x/", "V", frozenset({INSTANCE_CREATED, STUDY_STABLE}), None, {"MR"})
    assert mr.matches(STABLE) and not mr.matches(CREATED)


def test_issue20_times_parse_iso_8601_and_durations() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
    assert parse_time("1970-01-01T00:01:00Z", "startTime") == 60.0
    assert parse_time("1970-01-01T01:00:00+01:00", "x") == 0.0
    assert parse_time("1970-01-01T00:00:30", "x") == 30.0  # naive: UTC
    with pytest.raises(BadRequestError, match="startTime"):
        parse_time("yesterday", "startTime")
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("2h", 10000.0) == 2800.0
    assert parse_since("1.5m", 100.0) == 10.0
    assert parse_since("1d", 86400.0) == 0.0
    assert parse_since("1970-01-01T00:00:10Z", 0.0) == 10.0
    with pytest.raises(BadRequestError):
        parse_since("2 hours", 0.0)


def test_issue20_event_types_and_modalities_are_checked() -> None:
    assert parse_event_types(" instance.created , study.stable") == {INSTANCE_CREATED, STUDY_STABLE}
    with pytest.raises(BadRequestError, match=r"instance\.updated"):
        parse_event_types("instance.updated")
    with pytest.raises(BadRequestError, match="none given"):
        parse_event_types(" , ")
    assert parse_modalities(["ct", "MR,sr"]) == {"CT", "MR", "SR"}
    with pytest.raises(BadRequestError):
        parse_modalities(["C*"])


def test_issue20_retries_back_off_exponentially_with_jitter_up_to_an_hour() -> None:
    rng = random.Random(20)
    for attempt, full in ((1, 2.0), (2, 4.0), (5, 32.0), (40, 3600.0)):
        delays = [retry_delay(attempt, 2.0, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1  # jittered


def _heads(*specs: tuple[int, bool, int]) -> list[DueHead]:
    """(webhook, retrying, leased) per head, ids in order."""
    return [DueHead(i, w, retrying, leased) for i, (w, retrying, leased) in enumerate(specs, 1)]


def test_fair_heads_share_the_free_slots_between_webhooks() -> None:
    # Ranked within each webhook: webhook 1's first, webhook 2's first, then the seconds...
    heads = _heads(*[(1, False, 0), (2, False, 0)] * 6)
    assert fair_heads(heads, 8, {}) == [1, 2, 3, 4, 5, 6, 7, 8]
    # Webhook 1 already holds 4 of 8 slots here: the 4 free ones go to webhook 2.
    assert fair_heads(heads, 4, {1: 4}) == [2, 4, 6, 8]
    # Alone, a webhook may take every slot.
    assert fair_heads(_heads(*[(1, False, 0)] * 10), 8, {}) == list(range(1, 9))


def test_fair_heads_give_a_failing_webhook_one_run_at_a_time() -> None:
    """A receiver that does not answer cannot take every slot: its webhook has a failed
    delivery waiting (retrying), so it gets one run, none while one is leased anywhere."""
    dead = [(1, True, 0)] * 8
    healthy = [(2, False, 0)] * 8
    assert fair_heads(_heads(*dead, *healthy), 8, {}) == [1, 9, 10, 11, 12, 13, 14, 15]
    assert 1 not in fair_heads(_heads(*[(1, True, 1)] * 8, *healthy), 8, {})
    assert fair_heads(_heads(*[(1, True, 1)] * 8), 8, {}) == []
