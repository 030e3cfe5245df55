"""The S3 replay column (issue 22): a study's objects fetched straight from the S3 gateway.

The production pair's study retrieve is one GET per object from SeaweedFS on the same cores,
so its ceiling is not the sendfile replay of our answers but what the gateway itself gives:
the same objects, from the same gateway, with the parallelism our server uses
(`DICOMWEB_WADO_READ_AHEAD_OBJECTS`), and no DICOM work. The GETs are presigned once and sent
with aiohttp, so the client adds as little as it can (no request signing per object). A round
fetches the study's objects as many times as the plan asks for study retrieves; each whole
fetch is one sample in MB/s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

import aiohttp
from aiobotocore.session import get_session

__all__ = ["S3Replay", "s3_replay"]


@dataclass
class S3Replay:
    """Every object under one prefix of a bucket, fetched `concurrency` at a time."""

    session: aiohttp.ClientSession
    urls: list[str]
    concurrency: int

    async def fetch_all(self) -> tuple[int, float]:
        """(bytes, seconds) of one fetch of every object, bodies read to the end."""
        limit = asyncio.Semaphore(self.concurrency)

        async def one(url: str) -> int:
            async with limit, self.session.get(url) as answer:
                answer.raise_for_status()
                return len(await answer.read())

        started = time.perf_counter()
        sizes = await asyncio.gather(*(one(url) for url in self.urls))
        return sum(sizes), time.perf_counter() - started


@asynccontextmanager
async def s3_replay(
    env: dict[str, str], site: str, study: str, concurrency: int
) -> AsyncIterator[S3Replay]:
    """The replay of `study`'s objects in the store the production server of `env` writes to
    (DICOMWEB_STORAGE_URL `s3://bucket/prefix`, DICOMWEB_S3_ENDPOINT_URL, AWS_* keys)."""
    url = urlparse(env["DICOMWEB_STORAGE_URL"])
    bucket, root = url.netloc, url.path.strip("/")
    prefix = f"{root}/{site}/{study}/" if root else f"{site}/{study}/"
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=env["DICOMWEB_S3_ENDPOINT_URL"],
        region_name=env.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ) as client:
        keys: list[str] = []
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        keys = sorted(key for key in keys if key.endswith(".dcm"))
        if not keys:
            raise RuntimeError(f"no objects under s3://{bucket}/{prefix}")
        urls = [
            await client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=6 * 3600
            )
            for key in keys
        ]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        yield S3Replay(http, urls, concurrency)
