from __future__ import annotations

import orjson

from dicomweb_server.domain.dicom_json import absolute_bulk_uris


def test_relative_bulk_uris_become_absolute() -> None:
    stored = orjson.dumps(
        {
            "7FE00010": {
                "vr": "OW",
                "BulkDataURI": "/studies/1/series/2/instances/3/bulkdata/7FE00010",
            }
        }
    )
    served = orjson.loads(absolute_bulk_uris(stored, "http://h:9/dicomweb"))
    assert (
        served["7FE00010"]["BulkDataURI"]
        == "http://h:9/dicomweb/studies/1/series/2/instances/3/bulkdata/7FE00010"
    )


def test_values_that_look_like_keys_are_untouched() -> None:
    stored = orjson.dumps({"00081030": {"vr": "LO", "Value": ['"BulkDataURI":"/evil']}})
    assert absolute_bulk_uris(stored, "http://h") == stored
