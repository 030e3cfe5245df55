"""Route dispatch by the shape of the path: a request tries only the routes that could match it.

Starlette's Router tries its routes in order, one regular expression each. Under the DICOMweb
root that is about 15 expressions before a frame request reaches its route, some 20 µs of CPU
per request (BENCHMARKS.md). `ShapeRouter` files each route under the shape its path template
allows (how many segments, and the last one when it is a literal such as `metadata` or
`rendered`), and sends each request to a Starlette Router holding only the routes of its shape,
in their original order. Matching, 405s for a path served with other methods, path parameters
and `scope["route"]` stay Starlette's own; a request that none of them matches falls through
to a Router over the whole table, so an answer can only ever be the one the whole table gives.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

__all__ = ["ShapeRouter"]

# A template's shape: (segments, its last segment when literal, else None); None: any path
# at least that deep (a `{name:path}` parameter).
_Shape = tuple[int, str | None]


def _template_shape(route: BaseRoute) -> tuple[_Shape, bool] | None:
    """(shape, whether deeper paths match too) of a plain Route's template; None when the
    route is not one whose path alone decides (it is then tried for every request)."""
    if type(route) is not Route:
        return None
    segments = route.path.split("/")[1:]
    for number, segment in enumerate(segments):
        if ":path}" in segment:
            return (number + 1, None), True
    last = segments[-1] if segments else ""
    return (len(segments), None if "{" in last else last), False


def _route_path(scope: Scope) -> str:
    """The path the routes of a mount match against: the path after the mount's root."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


class ShapeRouter:
    """An ASGI app over `routes` that answers exactly as `Router(routes)` would, sooner."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._whole = Router(routes=list(routes), redirect_slashes=False)
        shapes = [_template_shape(route) for route in routes]
        self._literals = {shape[0][1] for shape in shapes if shape is not None} - {None}
        deepest = max((shape[0][0] for shape in shapes if shape is not None), default=0)
        self._clamp = deepest + 1  # any deeper path has the shape of this depth
        self._routers: dict[_Shape, Router] = {}
        for depth in range(self._clamp + 1):
            for last in (*self._literals, None):
                chosen = [
                    route
                    for route, shape in zip(routes, shapes, strict=True)
                    if _may_match(shape, depth, last)
                ]
                self._routers[depth, last] = Router(
                    routes=chosen, redirect_slashes=False, default=self._whole
                )

    @property
    def routes(self) -> list[BaseRoute]:
        """The whole table, as a Router's: what a Mount lists and builds URLs from."""
        return self._whole.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._whole(scope, receive, send)
            return
        path = _route_path(scope)
        depth = min(path.count("/"), self._clamp)
        last = path[path.rfind("/") + 1 :]
        await self._routers[depth, last if last in self._literals else None](scope, receive, send)


def _may_match(shape: tuple[_Shape, bool] | None, depth: int, last: str | None) -> bool:
    """Whether a route of `shape` may match a path `depth` segments deep ending in `last`
    (None: a segment that is no route's literal)."""
    if shape is None:
        return True
    (segments, literal), deeper = shape
    if deeper:
        return depth >= segments
    return depth == segments and (literal is None or literal == last)
