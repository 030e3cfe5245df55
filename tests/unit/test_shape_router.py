"""web/dispatch.py: ShapeRouter answers every request exactly as a Router over the whole table.

The table is the server's own (web/routes.py), each endpoint replaced by one that names its
route, so that an answer shows which route took the request. Paths come from every template
with its parameters filled in many ways (UIDs, empty, slashes, the table's literals), then
cut short, made longer, doubled slashes and trailing slashes; every method is tried on each.
"""

from __future__ import annotations

import itertools
import re

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from dicomweb_server.web.dispatch import ShapeRouter
from dicomweb_server.web.routes import ROUTES

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
_FILLINGS = ("1.2.3", "metadata", "frames", "1,2", "x%2Fy", "instances", "a.b-c_d")


def _named(index: int) -> object:
    async def endpoint(request: Request) -> Response:
        params = ",".join(f"{k}={v}" for k, v in sorted(request.path_params.items()))
        return PlainTextResponse(f"route {index} {params}")

    return endpoint


def _table() -> list[BaseRoute]:
    table: list[BaseRoute] = []
    for index, route in enumerate(ROUTES):
        assert isinstance(route, Route)
        methods = None if route.methods is None else sorted(route.methods - {"HEAD"})
        table.append(Route(route.path, _named(index), methods=methods))  # type: ignore[arg-type]
    return table


def _paths() -> list[str]:
    found = {"", "/", "//", "/unknown", "/studies/", "/studies//series"}
    for route in ROUTES:
        assert isinstance(route, Route)
        template = route.path
        names = re.findall(r"{[^}]+}", template)
        for filling in _FILLINGS:
            path = template
            for name in names:
                value = "a/b/c" if ":path}" in name else filling
                path = path.replace(name, value, 1)
            segments = path.split("/")
            found.update(
                {
                    path,
                    path + "/",
                    path + "/extra",
                    path + "/extra/deeper/still/more/segments/than/any/template/has",
                    "/".join(segments[:-1]),
                    path.replace("/", "//", 1),
                    path.replace("/", "//")[:-1],
                }
            )
    return sorted(found)


async def _answers(
    app: object, prefix: str, paths: list[str]
) -> list[tuple[str, str, int, str, str]]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    out = []
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for method, path in itertools.product(_METHODS, paths):
            answer = await client.request(method, prefix + path)
            out.append((method, path, answer.status_code, answer.headers.get("allow", ""),
                        answer.text))  # fmt: skip
    return out


@pytest.mark.parametrize("mounted", [True, False], ids=["under-a-mount", "at-the-top"])
async def test_shape_router_answers_as_the_whole_table_does(mounted: bool) -> None:
    table = _table()
    paths = _paths()
    assert len(paths) > 500
    # As web/sites.py mounts the table: no redirects (a trailing slash is stripped before).
    whole: object = Router(routes=table, redirect_slashes=False)
    shaped: object = ShapeRouter(table)
    prefix = ""
    if mounted:
        whole = Router(routes=[Mount("/dicomweb", app=whole)])
        shaped = Router(routes=[Mount("/dicomweb", app=shaped)])
        prefix = "/dicomweb"
    expected = await _answers(whole, prefix, paths)
    got = await _answers(shaped, prefix, paths)
    assert got == expected
    assert Mount("/dicomweb", app=ShapeRouter(table)).routes == table  # for url_path_for
    statuses = {status for _, _, status, _, _ in expected}
    assert {200, 404, 405} <= statuses  # the paths reach routes, miss them, and meet 405s


@pytest.mark.parametrize(
    ("method", "path", "tried"),
    [
        ("GET", "/studies/1/series/2/instances/3/frames/4", ["/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"]),
        ("GET", "/studies/1/series/2/metadata", ["/studies/{study}/series/{series}/metadata"]),
        ("GET", "/studies", ["/studies", "/studies"]),  # STOW's POST first: a partial match
    ],
)  # fmt: skip
async def test_a_request_tries_only_the_routes_of_its_shape(
    method: str, path: str, tried: list[str]
) -> None:
    shaped = ShapeRouter(_table())
    seen: list[str] = []
    original = Route.matches

    def counting(self: Route, scope: dict[str, object]) -> object:
        seen.append(self.path)
        return original(self, scope)

    Route.matches = counting  # type: ignore[method-assign, assignment]
    try:
        transport = httpx.ASGITransport(app=Router(routes=[Mount("/dicomweb", app=shaped)]))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.request(method, "/dicomweb" + path)
    finally:
        Route.matches = original  # type: ignore[method-assign]
    assert answer.status_code == 200
    assert seen == tried
