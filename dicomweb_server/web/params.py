"""Path parameters → validated keys; the only place URL text becomes a UID."""

from __future__ import annotations

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
    """`1,3,5` → [1, 3, 5] (PS3.18 10.4.1.1.4); anything else is a 400."""
    items = text.split(",")
    if len(items) > max_count:
        raise BadRequestError(f"at most {max_count} frames may be requested at once")
    numbers = []
    for item in items:
        item = item.strip()
        if not item.isdigit() or len(item) > 9:
            raise BadRequestError(
                f"frame list {text[:64]!r} must be positive integers joined by ','"
            )
        numbers.append(int(item))
    return numbers
