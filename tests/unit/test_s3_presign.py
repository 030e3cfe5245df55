"""storage/s3_presign.py: URLs signed here are the ones botocore signs (SigV4 query string),
for path-style endpoints, AWS's own virtual-hosted ones and temporary credentials."""

from __future__ import annotations

import asyncio
import datetime
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from dicomweb_server.storage.s3_presign import Credentials, learn_presigner

KEY = "objects/default/1.2.3/1.2.3.4/1.2.3.4.5/0123456789abcdef0123456789abcdef.dcm"


async def _botocore_url(
    endpoint: str | None, region: str, credentials: Credentials, key: str, method: str = "GET"
) -> str:
    config = AioConfig(
        s3={"addressing_style": "path" if endpoint else "auto"}, signature_version="s3v4"
    )
    async with get_session().create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        config=config,
    ) as client:
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        url: str = await client.generate_presigned_url(
            operation, Params={"Bucket": "bucket-1", "Key": key}, ExpiresIn=300
        )
        return url


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize(
    ("endpoint", "region", "token"),
    [
        ("http://127.0.0.1:8333", "us-east-1", None),  # SeaweedFS, MinIO: path style, a port
        ("https://minio.example.org", "eu-central-1", None),
        (None, "us-west-2", None),  # AWS itself: virtual-hosted bucket
        (None, "eu-west-1", "FwoGZXIvYXdzEB4aDH+token/with=signs"),  # temporary credentials
    ],
)
def test_urls_signed_here_are_botocores(
    endpoint: str | None, region: str, token: str | None, method: str
) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    first = asyncio.run(_botocore_url(endpoint, region, credentials, KEY, method))
    presigner = learn_presigner(first, KEY, credentials, method)
    assert presigner is not None, first
    other = "PUT" if method == "GET" else "GET"
    assert learn_presigner(first, KEY, credentials, other) is None  # one method's URL only
    other_key = KEY.replace("1.2.3.4.5", "1.2.3.4.6")
    expected = asyncio.run(_botocore_url(endpoint, region, credentials, other_key, method))
    expected_parts = urlsplit(expected)
    expected_query = dict(parse_qsl(expected_parts.query))
    when = datetime.datetime.strptime(expected_query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    ours = presigner.url(other_key, credentials, when, int(expected_query["X-Amz-Expires"]))
    ours_parts = urlsplit(ours)
    assert (ours_parts.scheme, ours_parts.netloc, ours_parts.path) == (
        expected_parts.scheme,
        expected_parts.netloc,
        expected_parts.path,
    )
    assert dict(parse_qsl(ours_parts.query)) == expected_query


def test_a_url_it_cannot_reproduce_is_left_to_botocore() -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret", None)
    url = asyncio.run(_botocore_url("http://127.0.0.1:8333", "us-east-1", credentials, KEY))
    assert learn_presigner(url, KEY, credentials) is not None
    assert (
        learn_presigner(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), KEY, credentials)
        is None
    )
    assert learn_presigner(url, KEY + "x", credentials) is None  # not this key's URL
    assert learn_presigner(url, KEY, Credentials("AKIDEXAMPLE", "other", None)) is None
    assert learn_presigner(url, KEY, Credentials("AKIDOTHER", "secret", None)) is None
