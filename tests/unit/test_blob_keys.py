"""The derived-data key layout (domain/blob_keys.py)."""

from __future__ import annotations

from dicomweb_server.domain.blob_keys import (
    cache_prefix,
    frame_cache_key,
    instance_blob_key,
    parse_instance_blob_key,
    rendered_cache_key,
    video_cache_key,
)
from dicomweb_server.domain.identifiers import InstanceKey

KEY = InstanceKey("default", "1.2", "3.4", "5.6")
DIGEST = "ab" * 32


def test_derived_data_lives_under_the_sites_cache_folder_by_object_digest() -> None:
    for derived in (
        frame_cache_key(KEY, DIGEST, 3, "1.2.840.10008.1.2.1"),
        rendered_cache_key(KEY, DIGEST, "t0", "jpeg"),
        video_cache_key(KEY, DIGEST, "m1-62.12.102"),
    ):
        assert derived.startswith(cache_prefix("default") + "1.2/3.4/5.6/" + DIGEST[:16] + "/")
        assert parse_instance_blob_key(derived) is None
    assert video_cache_key(KEY, DIGEST, "m1-x").endswith("/video/m1-x.mp4")  # issue 15
    assert video_cache_key(KEY, "cd" * 32, "m1-x") != video_cache_key(KEY, DIGEST, "m1-x")
    assert parse_instance_blob_key(instance_blob_key(KEY, DIGEST)) == KEY
