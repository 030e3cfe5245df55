"""Path parameters → validated keys; the only place URL text becomes a UID."""

from __future__ import annotations

import re

from starlette.requests import Request

from dicomweb_server.domain.identifiers import (
    DEFAULT_SITE,
    InstanceKey,
    SeriesKey,
    StudyKey,
    validate_uid,
)
from dicomweb_server.errors import BadRequestError

__all__ = ["frame_numbers", "instance_key", "series_key", "site_of", "study_key"]

_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() takes "²" and "٣"


def site_of(request: Request) -> str:
    """The site (partition) of the request; only the default site is exposed for now."""
    return DEFAULT_SITE


def study_key(request: Request) -> StudyKey:
    return StudyKey(
        site_of(request), validate_uid(request.path_params["study"], "StudyInstanceUID")
    )


def series_key(request: Request) -> SeriesKey:
    study = study_key(request)
    return SeriesKey(
        study.site,
        study.study_instance_uid,
        validate_uid(request.path_params["series"], "SeriesInstanceUID"),
    )


def instance_key(request: Request) -> InstanceKey:
    series = series_key(request)
    return InstanceKey(
        series.site,
        series.study_instance_uid,
        series.series_instance_uid,
        validate_uid(request.path_params["instance"], "SOPInstanceUID"),
    )


def frame_numbers(text: str, max_count: int = 10_000) -> list[int]:
    """`1,3,5` → [1, 3, 5] (PS3.18 10.4.1.1.4), each frame once in the order first asked for:
    a repeated number is answered once (a 20 KB URL of one frame repeated must not become
    gigabytes). Anything but ASCII digits, an empty item or too many frames is a 400."""
    items = text.split(",")
    numbers: dict[int, None] = {}
    for item in items:
        item = item.strip()
        if not _DIGITS.fullmatch(item):
            raise BadRequestError(
                f"frame list {text[:64]!r} must be positive integers joined by ','"
                + (" (an item is empty)" if not item else "")
            )
        numbers[int(item)] = None
        if len(numbers) > max_count:
            raise BadRequestError(f"at most {max_count} different frames may be asked for at once")
    return list(numbers)
