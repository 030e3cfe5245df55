"""QIDO-RS (PS3.18 10.6): the six search resources."""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.domain.query import parse_query
from dicomweb_server.web.negotiation import accept_json
from dicomweb_server.web.params import accept_of, root_url_of, search_sites, site_of
from dicomweb_server.web.state import AppState

__all__ = ["search_for_instances", "search_for_series", "search_for_studies"]


async def _search(request: Request, level: Level) -> Response:
    state: AppState = request.app.state.dicomweb
    settings = state.settings
    media_type = accept_json(accept_of(request))
    study = request.path_params.get("study")
    series = request.path_params.get("series")
    if study is not None:
        validate_uid(study, "StudyInstanceUID")
    if series is not None:
        validate_uid(series, "SeriesInstanceUID")
    sites = await search_sites(request)
    # Starlette percent-decodes the query string exactly once; values are used as they arrive.
    # `accept` replaces the Accept header (PS3.18 8.3.3.1): a control parameter, not a key.
    query = parse_query(
        [(name, value) for name, value in request.query_params.multi_items() if name != "accept"],
        level,
        sites[0],
        study,
        series,
        default_limit=settings.default_query_limit,
        max_limit=settings.max_query_limit,
        max_offset=settings.max_query_offset,
        scan_timeout=settings.qido_scan_timeout,
        max_values=settings.max_query_values,
        max_metadata_limit=settings.max_metadata_query_limit,
    )
    if site_of(request) is None:  # the enterprise root: every readable site at once
        query = replace(query, sites=sites)
    answer = await state.search.answer(query, root_url_of(request))
    request.state.audit_results = answer.results  # web/audit.py
    response = Response(answer.body, media_type=media_type)
    for text in answer.warnings:
        response.headers.append("Warning", f'299 dicomweb-server "{text}"')
    return response


async def search_for_studies(request: Request) -> Response:
    """GET /studies."""
    return await _search(request, Level.STUDY)


async def search_for_series(request: Request) -> Response:
    """GET /series and /studies/{study}/series."""
    return await _search(request, Level.SERIES)


async def search_for_instances(request: Request) -> Response:
    """GET /instances, /studies/{study}/instances and /studies/{study}/series/{series}/instances."""
    return await _search(request, Level.INSTANCE)
