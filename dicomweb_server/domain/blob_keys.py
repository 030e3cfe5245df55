"""The blob-key layout, in one place: where instance objects and derived data live in a store.

    {site}/{study}/{series}/{sop}/{digest32}.dcm                    a stored instance
    {site}/cache/{study}/{series}/{sop}/{digest16}/frames/{n}.{ts}  a transcoded frame
    {site}/cache/{study}/{series}/{sop}/{digest16}/rendered/{h}.{x} a rendered image/thumbnail
    {site}/cache/{study}/{series}/{sop}/{digest16}/video/{h}.mp4    stored video remuxed to MP4

Keys are built only from validated UIDs, site names and hex digests, so they hold nothing a
store must escape. Derived data is keyed by the stored object's digest: a new object under
the same UIDs never finds a stale cache entry.
"""

from __future__ import annotations

import re

from dicomweb_server.domain.identifiers import InstanceKey

__all__ = [
    "CACHE_FOLDER",
    "cache_prefix",
    "derived_prefix",
    "frame_cache_key",
    "instance_blob_key",
    "parse_instance_blob_key",
    "rendered_cache_key",
    "video_cache_key",
]

CACHE_FOLDER = "cache"

_INSTANCE_KEY = re.compile(
    r"^(?P<site>[a-z0-9][a-z0-9_-]*)/(?P<study>[0-9.]+)/(?P<series>[0-9.]+)/"
    r"(?P<sop>[0-9.]+)/[0-9a-f]+\.dcm$"
)


def instance_blob_key(key: InstanceKey, digest: str) -> str:
    """Where an instance's object lives: different content never shares a key."""
    return (
        f"{key.site}/{key.study_instance_uid}/{key.series_instance_uid}/"
        f"{key.sop_instance_uid}/{digest[:32]}.dcm"
    )


def parse_instance_blob_key(blob_key: str) -> InstanceKey | None:
    """The instance an object key names, or None for derived data and anything else."""
    match = _INSTANCE_KEY.match(blob_key)
    if match is None:
        return None
    return InstanceKey(match["site"], match["study"], match["series"], match["sop"])


def cache_prefix(site: str) -> str:
    """The folder of a site's derived data (ends with a slash)."""
    return f"{site}/{CACHE_FOLDER}/"


def _instance_cache(key: InstanceKey, digest: str) -> str:
    return (
        f"{cache_prefix(key.site)}{key.study_instance_uid}/{key.series_instance_uid}/"
        f"{key.sop_instance_uid}/{digest[:16]}"
    )


def frame_cache_key(key: InstanceKey, digest: str, number: int, syntax: str) -> str:
    """A frame of the object with this digest, transcoded to `syntax`."""
    return f"{_instance_cache(key, digest)}/frames/{number}.{syntax}"


def rendered_cache_key(key: InstanceKey, digest: str, token: str, extension: str) -> str:
    """A rendered image of the object with this digest; `token` hashes frames and options."""
    return f"{_instance_cache(key, digest)}/rendered/{token}.{extension}"


def video_cache_key(key: InstanceKey, digest: str, token: str) -> str:
    """The stored video of the object with this digest, remuxed into MP4; `token` names the
    remuxer's version, so an upgrade never serves an older remux under a new entity tag."""
    return f"{_instance_cache(key, digest)}/video/{token}.mp4"


def derived_prefix(
    site: str,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> str:
    """The folder of the derived data of a study, a series or an instance (every digest)."""
    parts = [study_instance_uid, series_instance_uid, sop_instance_uid]
    return cache_prefix(site) + "".join(f"{part}/" for part in parts if part is not None)
