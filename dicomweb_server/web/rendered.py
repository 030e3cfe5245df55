"""Rendered resources and thumbnails (PS3.18 10.4.1.1.3, 8.3.5): parse, plan, respond.

The `accept` query parameter wins over the Accept header (PS3.18 8.3.3.1): viewers send
both. Each image carries a strong ETag computed before rendering, so If-None-Match is a
304 without pixel work, and Cache-Control (private: these are patient images).

A rendered video instance is the video (Table 8.7.4-1: video/mp4, video/mpeg, video/H265),
unless only images are acceptable (then its first frame); a rendered Encapsulated Document
is the document in its own media type (application/pdf, text/xml, model/...). Both are one
body with byte ranges (web/media.py), as browsers' <video> and <object> elements ask.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dicomweb_server.codecs.rendering import (
    ANNOTATIONS,
    RENDERED_MEDIA_TYPES,
    RenderOptions,
    Viewport,
    Window,
)
from dicomweb_server.config import Settings
from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.errors import BadRequestError, NotAcceptableError
from dicomweb_server.services.media import choose_media
from dicomweb_server.services.render import RenderBusyError, Rendering, RenderService
from dicomweb_server.services.retrieve import RetrieveService
from dicomweb_server.web.errors import error_response
from dicomweb_server.web.media import if_none_match, media_response
from dicomweb_server.web.multipart import iter_multipart, multipart_content_type, new_boundary
from dicomweb_server.web.negotiation import accept_media, parse_accept
from dicomweb_server.web.params import (
    frame_numbers,
    instance_key,
    query_value,
    root_url_of,
    series_key,
    study_key,
)

__all__ = [
    "if_none_match",
    "parse_render_options",
    "rendered_media_type",
    "retrieve_rendered_frames",
    "retrieve_rendered_instance",
    "retrieve_rendered_series",
    "retrieve_rendered_study",
    "retrieve_thumbnail_frame",
    "retrieve_thumbnail_instance",
    "retrieve_thumbnail_series",
    "retrieve_thumbnail_study",
]

_WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
_DEFAULT = RENDERED_MEDIA_TYPES[0]


def _render(request: Request) -> RenderService:
    service: RenderService = request.app.state.dicomweb.render
    return service


def _retrieve(request: Request) -> RetrieveService:
    service: RetrieveService = request.app.state.dicomweb.retrieve
    return service


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.dicomweb.settings
    return settings


def rendered_media_type(accept_param: str | None, accept_header: str | None) -> str:
    """The first rendered media type acceptable (the `accept` parameter wins); else 406."""
    header = accept_param if accept_param is not None else accept_header
    refused = []
    for media in parse_accept(header):
        kind = media.type
        if kind == "multipart/related":
            kind = media.params.get("type", _DEFAULT).lower()
        if kind in RENDERED_MEDIA_TYPES:
            return kind
        if kind in ("*/*", "image/*"):
            return _DEFAULT
        refused.append(kind)
    raise NotAcceptableError(
        "rendered images are available as "
        + ", ".join(RENDERED_MEDIA_TYPES)
        + f"; not as {', '.join(refused[:4])}"
    )


def _integer(text: str, name: str, low: int, high: int) -> int:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        raise BadRequestError(f"{name} must be an integer, got {text[:20]!r}") from None
    if not low <= value <= high:
        raise BadRequestError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _number(text: str, name: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise BadRequestError(f"{name} must be a number, got {text.strip()[:20]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequestError(f"{name} must be a finite number")
    return value


def _window(text: str) -> Window:
    """`center,width,function` (PS3.18 8.3.5.1.4); the function defaults to linear."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise BadRequestError("window must be center,width,function (e.g. 40,400,linear)")
    center = _number(parts[0], "window center")
    width = _number(parts[1], "window width")
    name = parts[2].strip().lower() if len(parts) == 3 else "linear"
    function = _WINDOW_FUNCTIONS.get(name)
    if function is None:
        raise BadRequestError(
            f"window function {name[:20]!r} is not supported: use " + ", ".join(_WINDOW_FUNCTIONS)
        )
    minimum = 1.0 if function == "LINEAR" else 0.0
    if width < minimum or width == 0:
        raise BadRequestError(
            f"window width must be {'at least 1' if minimum else 'positive'} for {name}"
        )
    return Window(center, width, function)


def _viewport(text: str, largest: int) -> Viewport:
    """`vw,vh` or `vw,vh,sx,sy,sw,sh` (PS3.18 8.3.5.1.3); source parts may be left empty."""
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise BadRequestError("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    width = _integer(parts[0], "viewport width", 1, largest)
    height = _integer(parts[1], "viewport height", 1, largest)
    if len(parts) == 2:
        return Viewport(width, height)
    limit = 1 << 20
    sx = _integer(parts[2], "viewport sx", 0, limit) if parts[2].strip() else 0
    sy = _integer(parts[3], "viewport sy", 0, limit) if parts[3].strip() else 0
    sw = _integer(parts[4], "viewport sw", -limit, limit) if parts[4].strip() else None
    sh = _integer(parts[5], "viewport sh", -limit, limit) if parts[5].strip() else None
    if sw == 0 or sh == 0:
        raise BadRequestError("viewport sw and sh must not be 0")
    return Viewport(width, height, (sx, sy, sw, sh))


def parse_render_options(request: Request, *, thumbnail: bool = False) -> RenderOptions:
    """Query parameters → RenderOptions; an unsupported value is a 400 with the reason.

    Thumbnails take `viewport` (and `accept`, `charset`) only (PS3.18 10.4.1.1.5).
    """
    media_type = rendered_media_type(query_value(request, "accept"), request.headers.get("accept"))
    largest = _settings(request).max_viewport
    viewport_text = query_value(request, "viewport")
    viewport = _viewport(viewport_text, largest) if viewport_text is not None else None
    if thumbnail:
        return RenderOptions(media_type=media_type, viewport=viewport)
    window_text = query_value(request, "window")
    quality_text = query_value(request, "quality")
    annotation_text = query_value(request, "annotation")
    annotations: list[str] = []
    for item in (annotation_text or "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item not in ANNOTATIONS:
            raise BadRequestError(
                f"annotation {item[:20]!r} is not supported: use {', '.join(ANNOTATIONS)}"
            )
        if item not in annotations:
            annotations.append(item)
    icc = query_value(request, "iccprofile")
    if icc is not None and icc.strip().lower() not in ("no", ""):
        raise BadRequestError("iccprofile is not supported: only iccprofile=no")
    return RenderOptions(
        media_type=media_type,
        window=_window(window_text) if window_text is not None else None,
        viewport=viewport,
        quality=_integer(quality_text, "quality", 1, 100) if quality_text is not None else None,
        annotations=tuple(annotations),
    )


def _cache_control(settings: Settings, revalidate: bool) -> str:
    """Instance images never change; a study's or series' representative image may."""
    if revalidate:
        return "private, no-cache"
    return f"private, max-age={settings.http_cache_max_age}"


async def _image_response(
    request: Request, rendering: Rendering, *, revalidate: bool = False
) -> Response:
    headers = {
        "ETag": rendering.etag,
        "Cache-Control": _cache_control(_settings(request), revalidate),
        "Vary": "Accept",
    }
    if if_none_match(request.headers.get("if-none-match"), rendering.etag):
        return Response(status_code=304, headers=headers)
    try:
        image = await _render(request).produce(rendering)
    except RenderBusyError as exc:
        return _busy(exc)
    return _HeldResponse(
        image.data, image.release, media_type=rendering.options.media_type, headers=headers
    )


def _busy(exc: RenderBusyError) -> Response:
    """503 with Retry-After: renderings in flight hold the pixel budget."""
    return error_response(exc.status, exc.reason, {"Retry-After": str(exc.retry_after)})


class _HeldResponse(Response):
    """A rendered image whose share of the pixel budget is given back once it is sent, or its
    client is gone: bytes waiting for a slow client count as much as pixels being decoded."""

    def __init__(self, content: bytes, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class _HeldStreamingResponse(StreamingResponse):
    """A multipart answer holding its first image's share of the pixel budget until it is
    sent, or until the answer ends however it ends (its parts may never be iterated)."""

    def __init__(self, content: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def retrieve_rendered_instance(request: Request) -> Response:
    """GET .../instances/{instance}/rendered: the first frame, or an animated GIF; a video
    or a document as itself."""
    instance = await _retrieve(request).get_instance(await instance_key(request))
    media = await _media_rendered(request, instance)
    if media is not None:
        return media
    options = parse_render_options(request)
    rendering = _render(request).plan_for(instance, options)
    return await _image_response(request, rendering)


async def _media_rendered(request: Request, instance: StoredInstance) -> Response | None:
    """A video or document answer, or None when the instance renders as an image (a video
    asked for as an image only: its first frame)."""
    retrieve = _retrieve(request)
    video = retrieve.is_video(instance)
    if not video and not retrieve.is_document(instance):
        return None
    header = query_value(request, "accept")
    wanted = accept_media(header if header is not None else request.headers.get("accept"), "")
    single = [replace(w, multipart=False) for w in wanted if w.media_type]  # 8.7.4: one part
    accepted = [w.media_type for w in single]
    cache_control = _cache_control(_settings(request), False)
    if not video:
        body = await retrieve.open_document(instance, accepted, rendered=True)
        return media_response(request, body, single, cache_control)
    offered = await retrieve.video_media_types(instance, rendered=True)
    for media_type in accepted:
        if choose_media(offered, [media_type]) is not None:
            body = await retrieve.open_video(instance, [media_type], rendered=True)
            return media_response(request, body, single, cache_control)
        if choose_media(RENDERED_MEDIA_TYPES, [media_type]) is not None:
            return None
    raise NotAcceptableError(
        f"this video is rendered as {', '.join(offered) or 'no video type here'}, or its first"
        f" frame as {', '.join(RENDERED_MEDIA_TYPES)}; not as {', '.join(accepted[:4])}"
    )


async def retrieve_rendered_frames(request: Request) -> Response:
    """GET .../frames/{frames}/rendered: one frame, or several as an animated GIF."""
    options = parse_render_options(request)
    numbers = frame_numbers(request.path_params["frames"], max_count=1000)
    rendering = await _render(request).plan_instance(await instance_key(request), options, numbers)
    return await _image_response(request, rendering)


async def _rendered_parts(request: Request, series_uid: str | None) -> Response:
    """multipart/related of each instance rendered, one at a time (PS3.18 10.4.1.1.3); an
    instance that cannot be rendered is left out, and if none can, the answer is its 406."""
    options = parse_render_options(request)
    study = await study_key(request)
    images = _render(request).iter_images(study, series_uid, options)
    try:
        first, first_image = await anext(images)  # a failure here is still a proper status
    except RenderBusyError as exc:
        return _busy(exc)
    root = root_url_of(request)
    boundary = new_boundary()

    def headers(rendering: Rendering) -> dict[str, str]:
        key = rendering.instance.key
        return {
            "Content-Type": options.media_type,
            "Content-Location": (
                f"{root}/studies/{key.study_instance_uid}/series/{key.series_instance_uid}"
                f"/instances/{key.sop_instance_uid}/rendered"
            ),
        }

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        try:
            yield headers(first), _one(first_image.data)
            async for rendering, image in images:
                yield headers(rendering), _one(image.data)
        finally:
            await images.aclose()

    return _HeldStreamingResponse(
        iter_multipart(parts(), boundary),
        first_image.release,
        media_type=multipart_content_type(options.media_type, boundary),
        headers={"Cache-Control": "private, no-cache", "Vary": "Accept"},
    )


async def retrieve_rendered_study(request: Request) -> Response:
    """GET /studies/{study}/rendered: every image of the study, rendered."""
    return await _rendered_parts(request, None)


async def retrieve_rendered_series(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/rendered: every image of the series, rendered."""
    return await _rendered_parts(request, (await series_key(request)).series_instance_uid)


async def retrieve_thumbnail_study(request: Request) -> Response:
    """GET /studies/{study}/thumbnail: the middle image of its first series with images."""
    options = parse_render_options(request, thumbnail=True)
    rendering = await _render(request).plan_thumbnail(await study_key(request), options=options)
    return await _image_response(request, rendering, revalidate=True)


async def retrieve_thumbnail_series(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/thumbnail: the series' middle image."""
    options = parse_render_options(request, thumbnail=True)
    key = await series_key(request)
    rendering = await _render(request).plan_thumbnail(
        key.study, key.series_instance_uid, options=options
    )
    return await _image_response(request, rendering, revalidate=True)


async def retrieve_thumbnail_instance(request: Request) -> Response:
    """GET .../instances/{instance}/thumbnail: the instance (its middle frame)."""
    options = parse_render_options(request, thumbnail=True)
    key = await instance_key(request)
    rendering = await _render(request).plan_thumbnail(
        key.study, key.series_instance_uid, key.sop_instance_uid, options=options
    )
    return await _image_response(request, rendering)


async def retrieve_thumbnail_frame(request: Request) -> Response:
    """GET .../frames/{frame}/thumbnail: one frame."""
    options = parse_render_options(request, thumbnail=True)
    key = await instance_key(request)
    numbers = frame_numbers(request.path_params["frames"], max_count=1)
    rendering = await _render(request).plan_thumbnail(
        key.study, key.series_instance_uid, key.sop_instance_uid, numbers[0], options
    )
    return await _image_response(request, rendering)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
