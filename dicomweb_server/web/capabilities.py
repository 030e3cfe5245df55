"""Retrieve Capabilities (PS3.18 8.9, Annex H): WADL or JSON generated from the route table.

Nothing here is written by hand per resource except what a route cannot say about itself (the
PS3.18 transaction a handler implements and its media types). Paths and methods come from the
routes, transfer syntaxes from the codec registry, query keys from probing `parse_query`, and
limits from `Settings`, so the description cannot drift from what the server does.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.uid import AllTransferSyntaxes
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from dicomweb_server.codecs.media_types import FRAME_MEDIA_TYPES
from dicomweb_server.codecs.video import VIDEO_MEDIA_TYPES
from dicomweb_server.config import Settings
from dicomweb_server.domain.attributes import (
    BINARY_VRS,
    LEVEL_ATTRIBUTES,
    MATCH_KEYS,
    MAX_MATCH_SEQUENCE_DEPTH,
    NESTED_MATCH_KEYS,
    Level,
    keyword_for_tag,
)
from dicomweb_server.domain.documents import DOCUMENT_MEDIA_TYPES
from dicomweb_server.domain.query import MatchKind, parse_query
from dicomweb_server.errors import BadRequestError, NotAcceptableError
from dicomweb_server.web.errors import error_response
from dicomweb_server.web.negotiation import parse_accept
from dicomweb_server.web.params import root_url_of

__all__ = [
    "JSON",
    "WADL",
    "Operation",
    "QueryKey",
    "Resource",
    "SyntaxSupport",
    "any_attribute",
    "capabilities_response",
    "capabilities_routes",
    "describe",
    "describe_routes",
    "query_keys",
    "root_route",
    "transfer_syntaxes",
]

WADL = "application/vnd.sun.wadl+xml"
JSON = "application/json"
_WADL_NS = "http://wadl.dev.java.net/2009/02"
_OUR_NS = "urn:dicomweb-server:capabilities"  # our additions inside WADL <doc> elements
_DICOM_JSON = "application/dicom+json"
_DICOM_PARTS = 'multipart/related; type="application/dicom"'
_ZIP = "application/zip"
_QIDO_PARAMS = ("{attributeID}", "includefield", "fuzzymatching", "limit", "offset", "accept")
# Statuses any resource may answer (PS3.18 8.5): bad request (e.g. a malformed UID), not
# acceptable, request timeout, and the server-side failures.
_COMMON_STATUSES = (400, 401, 403, 406, 408, 500, 503)  # 401/403: access control
# Retrieve transcodes (services/retrieve.py): every syntax the registry encodes can be produced.
_TRANSCODING = True


@dataclass(frozen=True, slots=True)
class Operation:
    """What a route handler implements: one PS3.18 transaction on one resource."""

    transaction: str
    section: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    statuses: tuple[int, ...]
    query_parameters: tuple[str, ...] = ()


def _search(name: str) -> Operation:
    """Search: 413 when unindexed keys could not be matched within qido_scan_timeout."""
    return Operation(name, "10.6", (), (_DICOM_JSON, JSON), (200, 400, 406, 413), _QIDO_PARAMS)


def _retrieve(name: str, produces: tuple[str, ...], statuses: tuple[int, ...]) -> Operation:
    """Metadata, frames and bulk data: the `accept` parameter replaces Accept (8.3.3.1)."""
    return Operation(name, "10.4", (), produces, statuses, ("accept",))


def _instances(name: str, single: bool = False) -> Operation:
    """Study, series and instance: multipart, or a zip of the stored files (web/retrieve.py),
    and for an instance its bare Part 10 file; the `accept` parameter replaces the Accept
    header (PS3.18 8.3.3.1)."""
    produces = (_DICOM_PARTS, _ZIP, "application/dicom") if single else (_DICOM_PARTS, _ZIP)
    return Operation(name, "10.4", (), produces, (200, 404, 406), ("accept",))


_RENDERED = ("image/jpeg", "image/png", "image/gif")
_RENDERED_PARTS = tuple(f'multipart/related; type="{media}"' for media in _RENDERED)
# Video and documents are one body each (services/media.py), single part or one part of
# multipart/related; rendered video uses Table 8.7.4-1's names (video/mpeg, not video/mpeg2).
_VIDEO = tuple(dict.fromkeys(m for types in VIDEO_MEDIA_TYPES.values() for m in types))
_RENDERED_VIDEO = tuple(m for m in _VIDEO if m != "video/mpeg2")
# Frames (PS3.18 8.7.3.5): every media type of the codec registry's table, each served as
# stored, and produced from another syntax where `transferSyntaxes` says transcodeTo. Bulk
# data is sent as stored: octet-stream, or encapsulated Pixel Data in its own media type.
_FRAME_PARTS = tuple(f'multipart/related; type="{media}"' for media in FRAME_MEDIA_TYPES)
_BULKDATA = (*_FRAME_PARTS, *_VIDEO, *DOCUMENT_MEDIA_TYPES)
_RENDERED_INSTANCE = (*_RENDERED, *_RENDERED_VIDEO, *DOCUMENT_MEDIA_TYPES)
_RENDERED_PARAMS = ("accept", "window", "viewport", "quality", "annotation", "iccprofile")


def _rendered(name: str, produces: tuple[str, ...], ranges: tuple[int, ...] = ()) -> Operation:
    """Rendered resources (10.4.1.1.3, 8.3.5): 304 answers a matching If-None-Match."""
    statuses = tuple(sorted((200, 304, 400, 404, 406, *ranges)))
    return Operation(name, "10.4", (), produces, statuses, _RENDERED_PARAMS)


def _thumbnail(name: str) -> Operation:
    return Operation(name, "10.4", (), _RENDERED, (200, 304, 400, 404, 406), ("accept", "viewport"))


def _delete(name: str) -> Operation:
    """DELETE (issue 18): no PS3.18 transaction; 409 for a legal hold or minimum retention."""
    return Operation(name, "-", (), (), (204, 404, 409, 412))


def _reject(name: str) -> Operation:
    """IOCM rejection as dcm4chee-arc defines it: 200 with {"count": N}."""
    return Operation(name, "-", (), (JSON,), (200, 404, 409, 412))


# Keyed by handler name: the only per-handler facts a Route does not carry.
_OPERATIONS: dict[str, Operation] = {
    "store_instances": Operation(
        "Store Instances",
        "10.5",
        (_DICOM_PARTS,),
        (_DICOM_JSON,),
        (200, 202, 400, 409, 413, 415, 429),
    ),
    "search_for_studies": _search("Search for Studies"),
    "search_for_series": _search("Search for Series"),
    "search_for_instances": _search("Search for Instances"),
    "retrieve_study": _instances("Retrieve Study"),
    "retrieve_series": _instances("Retrieve Series"),
    "retrieve_instance": _instances("Retrieve Instance", single=True),
    "retrieve_study_metadata": _retrieve(
        "Retrieve Study Metadata", (_DICOM_JSON, JSON), (200, 404, 406)
    ),
    "retrieve_series_metadata": _retrieve(
        "Retrieve Series Metadata", (_DICOM_JSON, JSON), (200, 404, 406)
    ),
    "retrieve_instance_metadata": _retrieve(
        "Retrieve Instance Metadata", (_DICOM_JSON, JSON), (200, 404, 406)
    ),
    "retrieve_instance_frames": _retrieve("Retrieve Frames", _FRAME_PARTS, (200, 400, 404, 406)),
    "retrieve_bulkdata": _retrieve("Retrieve Bulkdata", _BULKDATA, (200, 206, 304, 404, 406, 416)),
    "retrieve_rendered_study": _rendered("Retrieve Rendered Study", _RENDERED_PARTS),
    "retrieve_rendered_series": _rendered("Retrieve Rendered Series", _RENDERED_PARTS),
    "retrieve_rendered_instance": _rendered(
        "Retrieve Rendered Instance", _RENDERED_INSTANCE, (206, 416)
    ),
    "retrieve_rendered_frames": _rendered("Retrieve Rendered Frames", _RENDERED),
    "retrieve_thumbnail_study": _thumbnail("Retrieve Study Thumbnail"),
    "retrieve_thumbnail_series": _thumbnail("Retrieve Series Thumbnail"),
    "retrieve_thumbnail_instance": _thumbnail("Retrieve Instance Thumbnail"),
    "retrieve_thumbnail_frame": _thumbnail("Retrieve Frame Thumbnail"),
    "delete_study": _delete("Delete Study"),
    "delete_series": _delete("Delete Series"),
    "delete_instance": _delete("Delete Instance"),
    "reject_study": _reject("Reject Study"),
    "reject_series": _reject("Reject Series"),
    "reject_instance": _reject("Reject Instance"),
    # Not PS3.18 ("-"): the audit trail as a FHIR R4 Bundle of AuditEvent resources (issue 17)
    "search_audit_events": Operation(
        "Search Audit Events",
        "-",
        (),
        ("application/fhir+json",),
        (200, 400, 401, 403, 406),
        ("patient", "study", "user", "site", "since", "until", "_count", "_cursor"),
    ),
    # Not PS3.18 ("-"): Microsoft's DICOM change feed, as its DICOM service defines it
    "read_change_feed": Operation(
        "Read Change Feed",
        "-",
        (),
        (JSON,),
        (200, 400, 406),
        ("offset", "limit", "startTime", "endTime", "includemetadata"),
    ),
    "read_latest_change_feed": Operation(
        "Read Latest Change Feed", "-", (), (JSON,), (200, 204, 400, 406), ("includemetadata",)
    ),
}


@dataclass(frozen=True, slots=True)
class Resource:
    """One path under the DICOMweb root and the operation behind each method."""

    path: str  # as PS3.18 writes it: `{path}`, not Starlette's `{path:path}`
    route_path: str
    operations: dict[str, Operation] = field(default_factory=dict)

    @property
    def allow(self) -> list[str]:
        """The Allow header's methods: those routed, HEAD with GET, and always OPTIONS."""
        methods = set(self.operations)
        if "GET" in methods:
            methods.add("HEAD")
        methods.add("OPTIONS")
        return sorted(methods)


def describe_routes(routes: Iterable[BaseRoute]) -> list[Resource]:
    """Group the DICOMweb routes by path; a handler without an Operation is a bug (KeyError)."""
    resources: dict[str, Resource] = {}
    for route in routes:
        if not isinstance(route, Route) or getattr(route.endpoint, "_capabilities", False):
            continue
        name = getattr(route.endpoint, "__name__", repr(route.endpoint))
        if name not in _OPERATIONS:
            raise KeyError(f"route {route.path} handler {name} has no PS3.18 Operation")
        shown = re.sub(r":\w+}", "}", route.path)
        resource = resources.setdefault(route.path, Resource(shown, route.path))
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                resource.operations[method] = _OPERATIONS[name]
    return list(resources.values())


@dataclass(frozen=True, slots=True)
class SyntaxSupport:
    """What the server does with one transfer syntax."""

    uid: str
    name: str
    store: bool  # accepted by STOW-RS and kept byte for byte
    retrieve_as_stored: bool  # served by WADO-RS with transfer-syntax=* (or none asked)
    decode_frames: bool  # frames of it can be decoded to native (registry has a decoder)
    transcode_to: bool  # retrieve can produce it from another stored syntax

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "store": self.store,
            "retrieveAsStored": self.retrieve_as_stored,
            "decodeFrames": self.decode_frames,
            "transcodeTo": self.transcode_to,
        }


def _codec_registry() -> tuple[Iterable[str], Callable[[str], bool], Callable[[str], bool]]:
    """The one hook into the codec registry: (syntaxes to list, can_decode, can_encode).

    The registry has no listing function yet, so the candidates are pydicom's known syntaxes.
    """
    from dicomweb_server.codecs import registry  # lazy: imports coders on first use

    return (str(uid) for uid in AllTransferSyntaxes), registry.can_decode, registry.can_encode


@functools.cache
def transfer_syntaxes() -> tuple[SyntaxSupport, ...]:
    """Every transfer syntax we know, with what the server can do with each."""
    candidates, can_decode, can_encode = _codec_registry()
    names = {str(uid): uid.name for uid in AllTransferSyntaxes}
    # Any syntax whose header pydicom parses is stored as received and served as stored.
    return tuple(
        SyntaxSupport(
            uid=uid,
            name=names.get(uid, uid),
            store=True,
            retrieve_as_stored=True,
            decode_frames=can_decode(uid),
            transcode_to=_TRANSCODING and can_encode(uid),
        )
        for uid in candidates
    )


@dataclass(frozen=True, slots=True)
class QueryKey:
    """A QIDO-RS matching key and the PS3.4 C.2.2.2 matching types `parse_query` gives it.

    `indexed`: an index column answers it; else it is matched in the level's stored JSON.
    """

    keyword: str
    tag: str
    vr: str
    level: str
    matching: tuple[str, ...]
    indexed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "keyword": self.keyword,
            "tag": self.tag,
            "vr": self.vr,
            "level": self.level,
            "matching": list(self.matching),
            "indexed": self.indexed,
        }


# A value per matching type that parse_query accepts for some VR; the kind it returns decides.
_PROBES: dict[str, tuple[str, ...]] = {
    MatchKind.SINGLE: ("1.2.3", "20240101", "1200", "7", "X"),
    MatchKind.LIST: ("1.2.3,1.2.4", "A,B"),
    MatchKind.WILDCARD: ("X*",),
    MatchKind.RANGE: ("20240101-20241231", "0800-1700"),
}


@functools.cache
def query_keys() -> tuple[QueryKey, ...]:
    """Each attribute a level indexes or stores, with the matching types `parse_query` gives
    it (found by asking it); any other attribute is matched too, as `any_attribute` says."""
    keys = []
    stored = [(a.keyword, f"{a.tag:08X}", a) for level in Level for a in LEVEL_ATTRIBUTES[level]]
    stored += [
        (a.keyword, f"{a.tag:08X}", a) for a in MATCH_KEYS.values() if a.level is Level.STUDY
    ]
    stored += [
        (f"{keyword_for_tag(sequence)}.{a.keyword}", f"{sequence:08X}.{a.tag:08X}", a)
        for (sequence, _), a in NESTED_MATCH_KEYS.items()
    ]
    seen: set[str] = set()
    for keyword, tag, attribute in sorted(stored, key=lambda k: (_LEVELS[k[2].level], k[1])):
        if tag in seen or attribute.vr in BINARY_VRS or attribute.vr == "SQ":
            continue  # not matched themselves (a sequence matches through its items)
        seen.add(tag)
        kinds = ["universal"]
        for kind, probes in _PROBES.items():
            for value in probes:
                try:
                    query = parse_query([(keyword, value)], Level.INSTANCE, "probe")
                except BadRequestError:
                    continue
                if any(m.kind is kind for m in query.matches):
                    kinds.append(str(kind))
                    break
        indexed = attribute.column is not None
        keys.append(
            QueryKey(keyword, tag, attribute.vr, str(attribute.level), tuple(kinds), indexed)
        )
    return tuple(keys)


_LEVELS = {level: n for n, level in enumerate(Level)}


def any_attribute(settings: Settings) -> dict[str, Any]:
    """What QIDO-RS does with a key not among `query_keys` (issue 15)."""
    return {
        "matched": True,
        "indexed": False,
        "matchedIn": "instance metadata: a study or series matches when one of its instances does",
        "privateTags": "by tag (gggg,eeee); text or wildcard matching, the VR being unknown",
        "maxSequenceDepth": MAX_MATCH_SEQUENCE_DEPTH,
        "scanTimeout": settings.qido_scan_timeout,
        "scanTimeoutStatus": 413,
    }


def _limits(settings: Settings) -> dict[str, int | float]:
    """The configured limits a client can run into, by Settings field name."""
    names = (
        "max_request_bytes",
        "max_part_bytes",
        "max_parts",
        "max_sequence_depth",
        "max_frames",
        "max_pixel_bytes",
        "max_header_bytes",
        "default_query_limit",
        "max_query_limit",
        "max_query_offset",
        "max_query_values",
        "max_metadata_query_limit",
        "qido_scan_timeout",
        "body_timeout",
        "request_timeout",
        "max_concurrent_stores",
        "max_boundary_length",
        "min_upload_rate",
        "max_request_header_bytes",
        "max_request_headers",
        "header_timeout",
        "max_decoded_frame_bytes",
        "max_render_pixels",
        "max_token_bytes",
    )
    return {name: getattr(settings, name) for name in names if hasattr(settings, name)}


def describe(
    resources: Sequence[Resource], settings: Settings, prefix: str = "", base: str = ""
) -> dict[str, Any]:
    """The JSON capabilities document for the resources at or under `prefix`, at `base`
    (the DICOMweb root the request came in at; default: the enterprise root)."""
    chosen = [r for r in resources if _under(r.path, prefix)]
    return {
        "base": base or settings.root_url,
        "standard": "DICOM PS3.18",
        "resources": [
            {
                "path": resource.path,
                "allow": resource.allow,
                "methods": [
                    {
                        "name": method,
                        "transaction": op.transaction,
                        "section": op.section,
                        "consumes": list(op.consumes),
                        "produces": list(op.produces),
                        "queryParameters": list(op.query_parameters),
                        "statuses": sorted(set(op.statuses + _COMMON_STATUSES)),
                    }
                    for method, op in sorted(resource.operations.items())
                ],
            }
            for resource in chosen
        ],
        "transferSyntaxes": [s.to_json() for s in transfer_syntaxes()],
        "queryKeys": [k.to_json() for k in query_keys()],
        "anyAttribute": any_attribute(settings),
        "limits": _limits(settings),
    }


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _wadl(document: dict[str, Any]) -> bytes:
    """The JSON document as a WADL application (Annex H): nested resources, one per segment."""
    ET.register_namespace("", _WADL_NS)
    ET.register_namespace("dw", _OUR_NS)

    def q(tag: str) -> str:
        return f"{{{_WADL_NS}}}{tag}"

    def ours(tag: str) -> str:
        return f"{{{_OUR_NS}}}{tag}"

    app = ET.Element(q("application"))
    doc = ET.SubElement(app, q("doc"), title="Transfer syntaxes and limits")
    for syntax in document["transferSyntaxes"]:
        ET.SubElement(
            doc,
            ours("transferSyntax"),
            {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in syntax.items()},
        )
    for key in document["queryKeys"]:
        ET.SubElement(doc, ours("queryKey"), {k: _xml_value(v) for k, v in key.items()})
    ET.SubElement(
        doc, ours("anyAttribute"), {k: _xml_value(v) for k, v in document["anyAttribute"].items()}
    )
    for name, value in document["limits"].items():
        ET.SubElement(doc, ours("limit"), name=name, value=str(value))
    indexed = [k["keyword"] for k in document["queryKeys"] if k["indexed"]]
    match_keys = (
        f"Indexed: {', '.join(indexed)}. Any other attribute, private tags (by tag) and"
        f" sequence items (at most {document['anyAttribute']['maxSequenceDepth']} sequences"
        " deep) are matched unindexed (queryKey and anyAttribute above)."
    )
    root = ET.SubElement(app, q("resources"), base=document["base"] + "/")
    nodes: dict[str, ET.Element] = {"": root}
    for resource in document["resources"]:
        parent_path = ""
        for segment in resource["path"].strip("/").split("/"):
            path = f"{parent_path}/{segment}"
            if path not in nodes:
                node = ET.SubElement(nodes[parent_path], q("resource"), path=segment)
                if segment.startswith("{"):
                    name = segment.strip("{}").split(":")[0]
                    ET.SubElement(node, q("param"), name=name, style="template", required="true")
                nodes[path] = node
            parent_path = path
        target = nodes[parent_path]
        for method in resource["methods"]:
            element = ET.SubElement(
                target,
                q("method"),
                name=method["name"],
                id=f"{method['transaction'].replace(' ', '')}{resource['path']}",
            )
            section = method["section"]
            title = f"PS3.18 {section}" if section != "-" else "not part of PS3.18"
            ET.SubElement(element, q("doc"), title=title)
            request = ET.SubElement(element, q("request"))
            for param in method["queryParameters"]:
                param_node = ET.SubElement(request, q("param"), name=param, style="query")
                if param == "{attributeID}":
                    ET.SubElement(param_node, q("doc"), title="Matching keys").text = match_keys
            if method["produces"]:
                accept = ET.SubElement(request, q("param"), name="Accept", style="header")
                for media in method["produces"]:
                    ET.SubElement(accept, q("option"), value=media)
            for media in method["consumes"]:
                ET.SubElement(request, q("representation"), mediaType=media)
            for status in method["statuses"]:
                response = ET.SubElement(element, q("response"), status=str(status))
                if 200 <= status < 300:
                    for media in method["produces"]:
                        ET.SubElement(response, q("representation"), mediaType=media)
    return bytes(ET.tostring(app, encoding="utf-8", xml_declaration=True))


def _xml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _negotiate(header: str | None) -> str:
    """WADL unless JSON is preferred (PS3.18 8.9.1.3); anything else is a 406."""
    for media in parse_accept(header):
        if media.type in (WADL, "application/xml", "application/*", "*/*"):
            return WADL
        if media.type in (JSON, _DICOM_JSON):
            return JSON
    raise NotAcceptableError(f"the capabilities description is available as {WADL} or {JSON}")


class _CapabilitiesEndpoint:
    """OPTIONS → the description of `prefix` and below; any other unrouted method → 405.

    An ASGI app rather than a function, so a Route without `methods` matches every method.
    """

    _capabilities = True

    def __init__(self, resources: Sequence[Resource], prefix: str, allow: list[str]) -> None:
        self.resources = resources
        self.prefix = prefix
        self.allow = ", ".join(allow)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self.respond(request)
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        headers = {"Allow": self.allow}
        if request.method != "OPTIONS":
            method = request.method[:16].encode("unicode_escape").decode("ascii")
            return error_response(
                405, f"{method} is not allowed here; allowed: {self.allow}", headers
            )
        return capabilities_response(request, self.resources, self.prefix, headers)


def capabilities_response(
    request: Request,
    resources: Sequence[Resource],
    prefix: str = "",
    headers: dict[str, str] | None = None,
) -> Response:
    """The description of `prefix` and below as WADL, or JSON when Accept prefers it."""
    try:
        media = _negotiate(request.headers.get("accept"))
    except NotAcceptableError as exc:
        return error_response(exc.status, exc.reason, headers)
    settings: Settings = request.app.state.dicomweb.settings
    document = describe(resources, settings, prefix, root_url_of(request))
    body = orjson.dumps(document) if media == JSON else _wadl(document)
    return Response(body, media_type=media, headers=headers)


def capabilities_routes(routes: Sequence[BaseRoute]) -> list[Route]:
    """Routes to append to the table: OPTIONS on the root, and on each path OPTIONS or a 405."""
    resources = describe_routes(routes)
    added = [Route("/", _CapabilitiesEndpoint(resources, "", ["OPTIONS"]))]
    for resource in resources:
        # No `methods`: this route matches every method the earlier routes left unmatched.
        added.append(
            Route(
                resource.route_path, _CapabilitiesEndpoint(resources, resource.path, resource.allow)
            )
        )
    return added


def root_route(path: str, routes: Sequence[BaseRoute]) -> Route:
    """OPTIONS on the DICOMweb root without its trailing slash (`/dicomweb`)."""
    return Route(path, _CapabilitiesEndpoint(describe_routes(routes), "", ["OPTIONS"]))
