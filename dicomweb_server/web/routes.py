"""The URL table: one line per PS3.18 resource, under the DICOMweb root."""

from __future__ import annotations

from starlette.routing import Route

from dicomweb_server.web import audit, delete, rendered, retrieve, search, store
from dicomweb_server.web.capabilities import capabilities_routes

__all__ = ["ROUTES"]

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

ROUTES = [
    # STOW-RS (10.5)
    Route("/studies", store.store_instances, methods=["POST"]),
    Route(_STUDY, store.store_instances, methods=["POST"]),
    # QIDO-RS (10.6)
    Route("/studies", search.search_for_studies, methods=["GET"]),
    Route("/series", search.search_for_series, methods=["GET"]),
    Route("/instances", search.search_for_instances, methods=["GET"]),
    Route(_STUDY + "/series", search.search_for_series, methods=["GET"]),
    Route(_STUDY + "/instances", search.search_for_instances, methods=["GET"]),
    Route(_SERIES + "/instances", search.search_for_instances, methods=["GET"]),
    # WADO-RS (10.4)
    Route(_STUDY, retrieve.retrieve_study, methods=["GET"]),
    Route(_STUDY + "/metadata", retrieve.retrieve_study_metadata, methods=["GET"]),
    Route(_SERIES, retrieve.retrieve_series, methods=["GET"]),
    Route(_SERIES + "/metadata", retrieve.retrieve_series_metadata, methods=["GET"]),
    Route(_INSTANCE, retrieve.retrieve_instance, methods=["GET"]),
    Route(_INSTANCE + "/metadata", retrieve.retrieve_instance_metadata, methods=["GET"]),
    Route(_INSTANCE + "/frames/{frames}", retrieve.retrieve_instance_frames, methods=["GET"]),
    Route(_INSTANCE + "/bulkdata/{path:path}", retrieve.retrieve_bulkdata, methods=["GET"]),
]

# WADO-RS rendered resources and thumbnails (10.4.1.1.3, 8.3.5)
_FRAMES = _INSTANCE + "/frames/{frames}"
ROUTES += [
    Route(_STUDY + "/rendered", rendered.retrieve_rendered_study, methods=["GET"]),
    Route(_SERIES + "/rendered", rendered.retrieve_rendered_series, methods=["GET"]),
    Route(_INSTANCE + "/rendered", rendered.retrieve_rendered_instance, methods=["GET"]),
    Route(_FRAMES + "/rendered", rendered.retrieve_rendered_frames, methods=["GET"]),
    Route(_STUDY + "/thumbnail", rendered.retrieve_thumbnail_study, methods=["GET"]),
    Route(_SERIES + "/thumbnail", rendered.retrieve_thumbnail_series, methods=["GET"]),
    Route(_INSTANCE + "/thumbnail", rendered.retrieve_thumbnail_instance, methods=["GET"]),
    Route(_FRAMES + "/thumbnail", rendered.retrieve_thumbnail_frame, methods=["GET"]),
]

# Deleting and rejecting (issue 18; not PS3.18 transactions): DELETE as the Microsoft and
# Google DICOMweb services have it, reject as dcm4chee-arc has it (the OHIF Viewer calls it)
_REJECT = "/reject/{code}"
ROUTES += [
    Route(_STUDY, delete.delete_study, methods=["DELETE"]),
    Route(_SERIES, delete.delete_series, methods=["DELETE"]),
    Route(_INSTANCE, delete.delete_instance, methods=["DELETE"]),
    Route(_STUDY + _REJECT, delete.reject_study, methods=["POST"]),
    Route(_SERIES + _REJECT, delete.reject_series, methods=["POST"]),
    Route(_INSTANCE + _REJECT, delete.reject_instance, methods=["POST"]),
]

# The audit trail as FHIR R4 AuditEvent resources (not PS3.18; issue 17): needs the admin role
ROUTES += [Route("/audit", audit.search_audit_events, methods=["GET"])]

# Retrieve Capabilities (8.9): OPTIONS on the root and on every resource; other methods get a
# 405 whose Allow header lists every method of the path. Generated from the lines above.
ROUTES += capabilities_routes(ROUTES)
