"""What a person finds at the server's root: `/` (what this is, how much it holds, where to go),
`/api` (the resources, generated from the route table) and `/capabilities` (PS3.18's
description by GET, for a link: OPTIONS on /dicomweb serves the same).

HTML for a browser, JSON for `Accept: application/json`; no external assets, a few lines of
inline CSS. Links are relative, so the pages work behind a proxy that adds a path prefix.
"""

from __future__ import annotations

import html
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb_server import telemetry
from dicomweb_server.errors import DicomwebError
from dicomweb_server.services.status import Counts
from dicomweb_server.services.viewer import PACKAGE, installed_viewer
from dicomweb_server.web.capabilities import capabilities_response, describe_routes
from dicomweb_server.web.negotiation import parse_accept
from dicomweb_server.web.routes import ROUTES
from dicomweb_server.web.state import AppState

__all__ = ["LANDING_ROUTES", "api_summary", "capabilities", "landing"]

_HTML = "text/html; charset=utf-8"
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2733;
 max-width:56rem;margin:2.5rem auto;padding:0 1.25rem;background:#fbfcfd}
h1{font-size:1.6rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.sub{color:#5b6b7c;margin:0 0 1.5rem}
.counts{display:flex;gap:1rem;flex-wrap:wrap}
.count{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:.8rem 1.2rem;
 min-width:9rem}.count b{display:block;font-size:1.7rem}
code{background:#eef2f6;border-radius:4px;padding:.1em .35em;font-size:.92em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;border-bottom:1px solid #e4e9ee;padding:.35rem .5rem;vertical-align:top}
th{background:#f1f4f7}a{color:#0b5cad}ul{padding-left:1.2rem}.muted{color:#6b7a89}
"""


def _wants_json(request: Request) -> bool:
    for media in parse_accept(request.headers.get("accept")):
        if media.type in ("application/json", "application/dicom+json"):
            return True
        if media.type in ("text/html", "application/xhtml+xml", "text/*", "*/*"):
            return False
    return False


def _page(title: str, body: str) -> Response:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )
    return Response(document, media_type=_HTML, headers={"Cache-Control": "no-cache"})


def _json(document: Any) -> Response:
    return Response(
        orjson.dumps(document), media_type="application/json", headers={"Cache-Control": "no-cache"}
    )


async def _sites(state: AppState) -> list[str]:
    """The sites this server serves, the default one first."""
    try:
        names = await state.sites.names()
    except DicomwebError:
        names = frozenset()
    default = state.settings.default_site
    return [default, *sorted(names - {default})]


async def _counts(state: AppState) -> Counts | None:
    try:
        return await state.status.counts()
    except DicomwebError:
        return None  # the page still shows, without numbers


async def landing(request: Request) -> Response:
    """GET /: version, how much is stored, the sites and the links to everything else."""
    state: AppState = request.app.state.dicomweb
    settings = state.settings
    # This page needs no credentials: with access control on it says nothing of the data.
    private = bool(settings.auth_methods)
    counts = None if private else await _counts(state)
    sites = [] if private else await _sites(state)
    viewer = installed_viewer(settings.viewer_path)
    root = settings.root_url
    server = root.rsplit("/", 1)[0]
    if _wants_json(request):
        return _json(
            {
                "name": "dicomweb-server",
                "version": telemetry.server_version(),
                "dicomweb": root,
                "counts": None
                if counts is None
                else {
                    "studies": counts.studies,
                    "series": counts.series,
                    "instances": counts.instances,
                    "exact": counts.exact,
                },
                "sites": sites,
                "viewer": None
                if viewer is None
                else {"url": f"{server}/viewer/", "package": PACKAGE, "version": viewer.version},
                "links": {
                    "capabilities": f"{server}/capabilities",
                    "api": f"{server}/api",
                    "health": f"{server}/healthz",
                    "ready": f"{server}/readyz",
                    "metrics": f"{server}/metrics",
                },
            }
        )
    e = html.escape
    if private:
        numbers = (
            '<p class="muted">Access control is on: what is stored is shown to DICOMweb'
            " clients with credentials, not here.</p>"
        )
    elif counts is None:
        numbers = '<p class="muted">The index did not answer; counts are not available.</p>'
    else:
        about = "" if counts.exact else "≈ "
        numbers = '<div class="counts">' + "".join(
            f'<div class="count"><b>{about}{value:,}</b>{label}</div>'
            for value, label in (
                (counts.studies, "studies"),
                (counts.series, "series"),
                (counts.instances, "instances"),
            )
        )
        numbers += "</div>"
        if not counts.exact:
            numbers += '<p class="muted">≈: estimated from the database statistics.</p>'
    if viewer is None:
        viewer_item = (
            "<li>Viewer: not installed. <code>dicomweb-server viewer install</code> puts the OHIF"
            ' Viewer at <a href="viewer/">viewer/</a>.</li>'
        )
    else:
        version = f" {e(viewer.version)}" if viewer.version else ""
        viewer_item = (
            f'<li><a href="viewer/"><b>Open the viewer</b></a> (OHIF{version}): browse and'
            " view the studies stored here.</li>"
        )
    shown_sites = ", ".join(f"<code>{e(site)}</code>" for site in sites)
    site_roots = (
        f" Sites: {shown_sites} (each also at <code>{e(root)}/sites/NAME</code>)." if sites else ""
    )
    body = f"""<h1>dicomweb-server</h1>
<p class="sub">An async DICOMweb (DICOM PS3.18) server · version {e(telemetry.server_version())}</p>
<h2>Stored</h2>{numbers}
<h2>Where to go</h2><ul>
{viewer_item}
<li>DICOMweb root: <code>{e(root)}</code> (STOW-RS, QIDO-RS, WADO-RS; point any DICOMweb
client here).{site_roots}</li>
<li><a href="api">API summary</a>: every resource, its methods and PS3.18 transaction.</li>
<li><a href="capabilities">Capabilities</a> (PS3.18 8.9, WADL); as JSON:
<code>curl -X OPTIONS -H 'Accept: application/json' {e(root)}</code></li>
<li>Operations: <a href="healthz">healthz</a> (alive), <a href="readyz">readyz</a>
(backends reachable), <a href="metrics">metrics</a> (Prometheus).</li>
</ul>"""
    return _page("dicomweb-server", body)


async def api_summary(request: Request) -> Response:
    """GET /api: the DICOMweb resources from the route table (the capabilities as a table)."""
    state: AppState = request.app.state.dicomweb
    root = state.settings.root_url
    resources = describe_routes(ROUTES)
    if _wants_json(request):
        return capabilities_response(request, resources)
    rows = []
    for resource in resources:
        for method, operation in sorted(resource.operations.items()):
            produces = ", ".join(operation.consumes or operation.produces)
            rows.append(
                f"<tr><td><code>{method}</code></td><td><code>{html.escape(resource.path)}"
                f"</code></td><td>{html.escape(operation.transaction)}</td>"
                f"<td>{operation.section}</td><td>{html.escape(produces)}</td></tr>"
            )
    body = f"""<p><a href="./">← dicomweb-server</a></p><h1>API summary</h1>
<p class="sub">Paths are under the DICOMweb root <code>{html.escape(root)}</code>.
OPTIONS on any of them (or GET <a href="capabilities">capabilities</a>) describes it in full.
</p><table><tr><th>Method</th><th>Path</th><th>Transaction</th><th>PS3.18</th>
<th>Media types (request body, or response)</th></tr>{"".join(rows)}</table>"""
    return _page("dicomweb-server API", body)


async def capabilities(request: Request) -> Response:
    """GET /capabilities: what OPTIONS /dicomweb answers (WADL, or JSON when preferred)."""
    return capabilities_response(request, describe_routes(ROUTES))


LANDING_ROUTES = [
    Route("/", landing, methods=["GET", "HEAD"]),
    Route("/api", api_summary, methods=["GET", "HEAD"]),
    Route("/capabilities", capabilities, methods=["GET", "HEAD"]),
]
