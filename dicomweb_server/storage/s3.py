"""The S3 blob store on aiobotocore: single or multipart puts, ranged gets, errors wrapped.

Every call is bounded by the backend timeout, so a store that stops answering (a wedged
gateway, a partitioned network: connections still accepted, nothing ever said) is a
StoreUnavailableError after about that long, never a request held until it wakes:

- a request (a head, a delete, a listing page, a put of one object or of one multipart part,
  the start and end of a multipart upload) is answered within it, botocore's retries and a
  presigned attempt's fallback to botocore included; the body of one request is at most a
  part (DICOMWEB_S3_PART_SIZE) or the multipart threshold, so an object of any size is
  stored as long as each part gets through within the timeout;
- a read gets the object's answer within it, then each piece of its body within it: a
  transfer that keeps moving is never cut, however long it takes in all, one that stalls
  mid-body is.

Time spent waiting for the caller (the next chunk of an upload, the consumer of a read) does
not count.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.loaders import Loader, create_loader
from yarl import URL

from dicomweb_server.errors import (
    DicomwebError,
    NotFoundError,
    PayloadTooLargeError,
    StoreUnavailableError,
)
from dicomweb_server.storage.base import DEFAULT_CHUNK_SIZE, BlobInfo
from dicomweb_server.storage.s3_presign import Credentials, Presigner, learn_presigner

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, GetObjectOutputTypeDef

__all__ = ["MIN_PART_SIZE", "S3BlobStore"]

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 << 20  # S3 rejects smaller parts, except the last
# Reads: a GET through botocore costs ~2 ms of CPU before the first byte (events, endpoint
# rules, signing, parsing); signing a URL and fetching it on our own pool costs a quarter.
_PRESIGNED_SECONDS = 300  # lifetime of a read URL, fetched at once
_PRESIGNED_OPERATIONS = {"GET": "get_object", "PUT": "put_object"}
_MAX_PARTS = 10_000  # S3's limit on parts per multipart upload

# Keys are built from validated UIDs and hex digests, as for the filesystem store.
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")

# Error codes S3 (and compatible stores) use for a key that does not exist.
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})

# Transport faults, beside botocore's own: aiohttp's, timeouts, sockets.
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, TimeoutError, OSError)

# A response body's read(n): up to n bytes as they arrive, b"" at the end.
_Read = Callable[[int], Awaitable[bytes]]


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """A store prefix is a key with an optional trailing slash; it becomes `prefix/`."""
    prefix = prefix.strip("/")
    return f"{_check_key(prefix)}/" if prefix else ""


def _client_error(exc: ClientError, action: str, key: str) -> DicomwebError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _MISSING_KEY_CODES or (status == 404 and code != "NoSuchBucket"):
        return NotFoundError(f"object {key} not found")
    message = str(error.get("Message", "")) or "no message"
    # Anything else (missing bucket, denied access, 5xx, throttling) is the backend's fault.
    return StoreUnavailableError(f"S3 {action} of {key} failed: {code or status}: {message}")


def _translate(exc: Exception, action: str, key: str) -> DicomwebError:
    """A driver exception as one of ours, with a reason a log reader can act on."""
    if isinstance(exc, ClientError):
        return _client_error(exc, action, key)
    if isinstance(exc, EndpointConnectionError):
        reason = f"cannot connect to S3 endpoint {exc.kwargs.get('endpoint_url', '')}"
    elif isinstance(exc, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        reason = "S3 did not answer in time"
    elif isinstance(exc, NoCredentialsError):
        reason = "no AWS credentials found"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return StoreUnavailableError(f"S3 {action} of {key} failed: {reason}")


@contextmanager
def _wrapped(action: str, key: str) -> Iterator[None]:
    """Re-raise driver exceptions from the enclosed S3 calls as DicomwebErrors."""
    try:
        yield
    except (ClientError, *_TRANSPORT_ERRORS) as exc:
        raise _translate(exc, action, key) from exc


def _range_header(start: int, length: int | None) -> str | None:
    if start == 0 and length is None:
        return None
    end = "" if length is None else str(start + length - 1)
    return f"bytes={start}-{end}"


def _is_invalid_range(exc: ClientError) -> bool:
    """S3 answers 416 InvalidRange when `start` lies at or past the end of the object."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return exc.response.get("Error", {}).get("Code") == "InvalidRange" or status == 416


_loaders: list[Loader] = []


def _session() -> AioSession:
    """A session sharing one botocore data loader per process: the service model and endpoint
    data (JSON) are then parsed once, not about 0.2 s again for every store opened (one per
    site with its own bucket, every server start, every test)."""
    session = get_session()
    if not _loaders:
        _loaders.append(create_loader(session.get_config_variable("data_path")))
    session.register_component("data_loader", _loaders[0])
    return session


class S3BlobStore:
    """Objects under `prefix` in one bucket; puts of `multipart_threshold` or more go multipart.

    A put holds at most max(multipart_threshold, part_size) bytes plus one incoming chunk.
    Each request, and each wait for more of a body, gives up after `backend_timeout` seconds
    (see the module's docstring).
    """

    def __init__(
        self,
        client: S3Client,
        exit_stack: AsyncExitStack,
        *,
        bucket: str,
        prefix: str = "",
        multipart_threshold: int = 8 << 20,
        part_size: int = 8 << 20,
        http: aiohttp.ClientSession | None = None,
        credentials: Any = None,
        backend_timeout: float = 30,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
        if backend_timeout <= 0:
            raise ValueError("backend_timeout must be positive")
        self._client = client
        self._exit_stack = exit_stack
        self._bucket = bucket
        self._prefix = _check_prefix(prefix)
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._timeout = backend_timeout
        # Multipart uploads being aborted after the store failed them, awaited by close().
        self._aborts: set[asyncio.Task[None]] = set()
        self._http = http  # reads by presigned URL when set; else every call goes by botocore
        # The session's credentials, for URLs signed here once botocore's first one showed
        # how (storage/s3_presign.py); None: botocore signs every URL.
        self._credentials: Any = credentials
        # By method, once botocore's first URL for it was checked (None: not a layout we sign);
        # without credentials neither is ever learned.
        self._presigners: dict[str, Presigner | None] = (
            {} if credentials is not None else dict.fromkeys(_PRESIGNED_OPERATIONS)
        )

    @classmethod
    async def create(
        cls,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 8 << 20,
        part_size: int = 8 << 20,
        connect_timeout: float = 5,
        backend_timeout: float = 30,
        max_attempts: int = 3,
        read_connections: int = 64,
    ) -> S3BlobStore:
        """Open a client (credentials from the standard AWS chain); close() releases it.

        `backend_timeout` bounds each request, retries included, and each wait for more of a
        body; botocore's `max_attempts` are tries within it (a quick failure is tried again)."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        config = AioConfig(
            connect_timeout=min(connect_timeout, backend_timeout),
            read_timeout=backend_timeout,
            # total_max_attempts counts the first try, unlike botocore's max_attempts.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            # Self-hosted S3 servers rarely resolve bucket subdomains; AWS picks its own style.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # Requests are signed with SigV4 anyway; without this, presigned read URLs would
            # use SigV2, which AWS refuses for newer buckets and regions.
            signature_version="s3v4",
        )
        exit_stack = AsyncExitStack()
        try:
            session = _session()
            with _wrapped("client creation", bucket):
                client = await exit_stack.enter_async_context(
                    session.create_client(
                        "s3", region_name=region, endpoint_url=endpoint_url, config=config
                    )
                )
                credentials = await session.get_credentials()
            http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=read_connections),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=min(connect_timeout, backend_timeout),
                    sock_read=backend_timeout,
                ),
                auto_decompress=False,
            )
            exit_stack.push_async_callback(http.close)
            return cls(
                client,
                exit_stack,
                bucket=bucket,
                prefix=prefix,
                multipart_threshold=multipart_threshold,
                part_size=part_size,
                http=http,
                credentials=credentials,
                backend_timeout=backend_timeout,
            )
        except BaseException:
            await exit_stack.aclose()
            raise

    def _object_key(self, key: str) -> str:
        return self._prefix + _check_key(key)

    async def put(self, key: str, chunks: AsyncIterator[bytes | memoryview]) -> int:
        object_key = self._object_key(key)
        buffer = bytearray()
        size = 0
        async for chunk in chunks:
            buffer += chunk
            size += len(chunk)
            if len(buffer) >= self._multipart_threshold:
                return await self._put_multipart(object_key, key, buffer, size, chunks)
        body = bytes(buffer)
        with _wrapped("put", key):
            async with asyncio.timeout(self._timeout):
                if not await self._presigned_put(object_key, key, body):
                    await self._client.put_object(
                        Bucket=self._bucket, Key=object_key, Body=body, ContentLength=size
                    )
        return size

    async def _presigned_put(self, object_key: str, key: str, body: bytes) -> bool:
        """PUT by a presigned URL on our pool (a quarter of botocore's CPU per object); False
        when it was not stored that way, so the caller goes by botocore (which retries, and
        explains errors). S3 stores a PUT whole or not at all, as botocore's."""
        if self._http is None:
            return False
        with _wrapped("put", key):
            url = await self._presign("PUT", object_key)
        if url is None:
            return False
        with warnings.catch_warnings():
            # aiohttp warns of bodies above 1 MiB; ours are bounded by the multipart threshold
            # and the transport sends them as they are (no thread would make it cheaper).
            warnings.simplefilter("ignore", ResourceWarning)
            payload = aiohttp.BytesPayload(body)
        try:
            async with self._http.put(URL(url, encoded=True), data=payload) as response:
                if response.status == 200:
                    return True
                logger.info(
                    "presigned PUT of %s answered %d: retrying through botocore",
                    key,
                    response.status,
                )
        except _TRANSPORT_ERRORS as exc:
            logger.info("presigned PUT of %s failed (%s): retrying through botocore", key, exc)
        return False

    async def _put_multipart(
        self,
        object_key: str,
        key: str,
        buffer: bytearray,
        size: int,
        chunks: AsyncIterator[bytes | memoryview],
    ) -> int:
        """Continue a put as a multipart upload; abort it on any failure, so nothing shows."""
        with _wrapped("multipart start", key):
            async with asyncio.timeout(self._timeout):
                created = await self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=object_key
                )
        upload_id = created["UploadId"]
        parts: list[CompletedPartTypeDef] = []

        async def upload(body: bytes) -> None:
            number = len(parts) + 1
            if number > _MAX_PARTS:
                raise PayloadTooLargeError(
                    f"object {key} needs more than {_MAX_PARTS} parts of {self._part_size} bytes"
                )
            with _wrapped("part upload", key):
                async with asyncio.timeout(self._timeout):
                    uploaded = await self._client.upload_part(
                        Bucket=self._bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ContentLength=len(body),
                    )
            parts.append({"ETag": uploaded["ETag"], "PartNumber": number})

        async def flush_full_parts() -> None:
            while len(buffer) >= self._part_size:
                with memoryview(buffer) as view:
                    body = bytes(view[: self._part_size])
                del buffer[: self._part_size]
                await upload(body)

        try:
            await flush_full_parts()
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                await flush_full_parts()
            if buffer:
                await upload(bytes(buffer))
                buffer.clear()
            with _wrapped("multipart completion", key):
                async with asyncio.timeout(self._timeout):
                    await self._client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
        except StoreUnavailableError:
            # The store failed the upload (it may not answer at all): the caller hears so now,
            # not one timeout later; the abort goes on meanwhile.
            task = asyncio.create_task(self._abort(object_key, upload_id))
            self._aborts.add(task)
            task.add_done_callback(self._aborts.discard)
            raise
        except BaseException:
            await self._abort(object_key, upload_id)
            raise
        return size

    async def _abort(self, object_key: str, upload_id: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=object_key, UploadId=upload_id
                )
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            # The put already failed; S3 lifecycle rules reap what this leaves behind.
            logger.warning(
                "could not abort multipart upload %s of %s: %s", upload_id, object_key, exc
            )

    async def _exists(self, key: str) -> None:
        """Raise NotFoundError unless `key` exists (for zero-length reads, which send no range)."""
        with _wrapped("head", key):
            async with asyncio.timeout(self._timeout):
                await self._client.head_object(Bucket=self._bucket, Key=self._object_key(key))

    @asynccontextmanager
    async def _presigned_get(
        self, key: str, range_header: str | None
    ) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """GET by a presigned URL on our pool: the response when it is the plain success
        asked for, else None so the caller goes by botocore (which retries, and explains
        errors). A missing key is NotFoundError at once: frame-cache misses are common."""
        if self._http is None:
            yield None
            return
        with _wrapped("get", key):
            url = await self._presign("GET", self._object_key(key))
        if url is None:  # never for a GET: botocore's URL stands in for ours
            yield None
            return
        headers = {} if range_header is None else {"Range": range_header}
        try:
            response = await self._http.get(URL(url, encoded=True), headers=headers)
        except _TRANSPORT_ERRORS as exc:
            logger.info("presigned GET of %s failed (%s): retrying through botocore", key, exc)
            yield None
            return
        async with response:
            if response.status == 404:
                raise NotFoundError(f"object {key} not found")
            if response.status == (200 if range_header is None else 206):
                yield response
            else:
                logger.info(
                    "presigned GET of %s answered %d: retrying through botocore",
                    key,
                    response.status,
                )
                yield None

    async def _presign(self, method: str, object_key: str) -> str | None:
        """A presigned GET or PUT of `object_key`, signed here once botocore's first URL for
        that method showed the layout and our signature of it was botocore's. Otherwise
        botocore's URL: always the first one, and every GET whose layout we do not sign;
        None for a PUT we do not sign (the caller puts by botocore)."""
        presigner = self._presigners.get(method)
        if presigner is not None:
            now = datetime.datetime.now(datetime.UTC)
            credentials = await self._signing_credentials()
            return presigner.url(object_key, credentials, now, _PRESIGNED_SECONDS)
        learned = method in self._presigners
        if learned and method == "PUT":
            return None
        url: str = await self._client.generate_presigned_url(
            _PRESIGNED_OPERATIONS[method],
            Params={"Bucket": self._bucket, "Key": object_key},
            ExpiresIn=_PRESIGNED_SECONDS,
        )
        if method not in self._presigners:  # learned once, whoever else asked meanwhile
            self._presigners[method] = None
            credentials = await self._signing_credentials()
            presigner = self._presigners[method] = learn_presigner(
                url, object_key, credentials, method
            )
            if presigner is None:
                logger.info("%s URLs stay signed by botocore: not SigV4 as known", method)
                return url if method == "GET" else None
        return url

    async def _signing_credentials(self) -> Credentials:
        """The session's keys as they are now (refreshable ones renew themselves)."""
        frozen = await self._credentials.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def _get_object(
        self, key: str, range_header: str | None
    ) -> GetObjectOutputTypeDef | None:
        """GET the object, or a range of it; None when the range starts past its end."""
        object_key = self._object_key(key)
        try:
            if range_header is None:
                return await self._client.get_object(Bucket=self._bucket, Key=object_key)
            return await self._client.get_object(
                Bucket=self._bucket, Key=object_key, Range=range_header
            )
        except ClientError as exc:
            if _is_invalid_range(exc):
                return None
            raise _translate(exc, "get", key) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _translate(exc, "get", key) from exc

    @asynccontextmanager
    async def _opened(self, key: str, range_header: str | None) -> AsyncIterator[_Read | None]:
        """The body of a GET of the object (or of a range of it) as its read(n); None when the
        range starts past the end. The answer comes within the timeout: a presigned GET and
        botocore's tries after it share that deadline."""
        async with AsyncExitStack() as stack:
            read: _Read | None = None
            with _wrapped("get", key):
                async with asyncio.timeout(self._timeout):
                    fast = await stack.enter_async_context(self._presigned_get(key, range_header))
                    if fast is not None:
                        read = fast.content.read
                    else:
                        response = await self._get_object(key, range_header)
                        if response is not None:
                            read = (await stack.enter_async_context(response["Body"])).read
            yield read

    async def _next(self, read: _Read, size: int, key: str) -> bytes:
        """Up to `size` more bytes of a body (b"" at its end), the first of them within the
        timeout: a body that stops coming is cut, one that keeps coming never is."""
        with _wrapped("read", key):
            async with asyncio.timeout(self._timeout):
                return await read(size)

    async def iter_get(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        if start < 0 or (length is not None and length < 0) or chunk_size < 1:
            raise ValueError("start and length must not be negative, chunk_size must be positive")
        if length == 0:
            await self._exists(key)
            return
        async with self._opened(key, _range_header(start, length)) as read:
            if read is None:
                return  # like reading a file past its end: nothing
            while chunk := await self._next(read, chunk_size, key):
                yield chunk

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError("start and length must not be negative")
        if length == 0:
            await self._exists(key)
            return b""
        pieces: list[bytes] = []
        received = 0
        async with self._opened(key, f"bytes={start}-{start + length - 1}") as read:
            # Piece by piece, as they arrive: the timeout is for each, not for the whole.
            while read is not None and received < length:
                piece = await self._next(read, length - received, key)
                if not piece:
                    break
                pieces.append(piece)
                received += len(piece)
        if received != length:
            raise NotFoundError(f"object {key} is shorter than the requested range")
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def delete(self, key: str) -> None:
        # S3 deletes are idempotent: a missing key answers 204 like a present one.
        with _wrapped("delete", key):
            async with asyncio.timeout(self._timeout):
                await self._client.delete_object(Bucket=self._bucket, Key=self._object_key(key))

    async def iter_objects(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix)
        iterator = aiter(pages)
        while True:
            with _wrapped("listing", prefix or "/"):
                try:
                    async with asyncio.timeout(self._timeout):  # a page; not the whole listing
                        page = await anext(iterator)
                except StopAsyncIteration:
                    return
            for item in page.get("Contents", []):
                object_key = item.get("Key", "")
                if object_key.startswith(self._prefix):
                    modified = item.get("LastModified")
                    yield BlobInfo(
                        object_key[len(self._prefix) :],
                        int(item.get("Size", 0)),
                        modified.timestamp() if modified is not None else 0.0,
                    )

    async def ping(self) -> None:
        """The bucket answers (HEAD bucket), within the timeout."""
        with _wrapped("bucket check", self._prefix or "/"):
            async with asyncio.timeout(self._timeout):
                await self._client.head_bucket(Bucket=self._bucket)

    async def close(self) -> None:
        if self._aborts:  # each bounded by the timeout
            await asyncio.wait(self._aborts)
        await self._exit_stack.aclose()
