"""Issue 22: study and series metadata built once per content and kept per process.

The key is the study's version (and the public root), which every change to the study
replaces: these tests follow one series through stores, a delete and a second root, and check
that the large-answer paths (streamed, begun in memory then streamed) send the same bytes as a
whole document.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.applications import Starlette

from dicomweb_server.domain.identifiers import StudyKey
from dicomweb_server.errors import NotFoundError
from dicomweb_server.services import metadata_documents
from dicomweb_server.services.metadata_documents import MetadataDocument, MetadataDocuments
from dicomweb_server.web.state import AppState

BASE = "http://testserver"
JSON = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}


async def _store(client: httpx.AsyncClient, datasets: list[Dataset]) -> None:
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text


def _sops(response: httpx.Response) -> list[str]:
    return [item["00080018"]["Value"][0] for item in orjson.loads(response.content)]


def _kept(app: Starlette) -> int:
    state: AppState = app.state.dicomweb
    return len(state.retrieve._documents._kept.entries)


async def test_issue22_series_metadata_is_kept_by_the_study_version(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, series, other = generate_uid(), generate_uid(), generate_uid()
    first = [ct_dataset(study, series, instance_number=n) for n in (3, 1, 2)]
    await _store(client, [*first, ct_dataset(study, other, instance_number=1)])
    path = f"/studies/{study}/series/{series}/metadata"

    answer = await client.get(path, headers=JSON)
    assert answer.status_code == 200
    assert _sops(answer) == [
        first[1].SOPInstanceUID,
        first[2].SOPInstanceUID,
        first[0].SOPInstanceUID,
    ]
    tag = answer.headers["etag"]
    assert tag == 'W/"' + hashlib.sha256(answer.content).hexdigest()[:32] + '"'
    assert answer.headers["content-length"] == str(len(answer.content))
    assert _kept(app) == 1

    again = await client.get(path, headers=JSON)
    assert again.content == answer.content and again.headers["etag"] == tag
    assert _kept(app) == 1  # the same version: the same entry
    zipped = await client.get(path, headers={**JSON, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == answer.content and zipped.headers["etag"] == tag
    unchanged = await client.get(path, headers={**JSON, "If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == tag

    whole = await client.get(f"/studies/{study}/metadata", headers=JSON)
    assert len(_sops(whole)) == 4
    assert _kept(app) == 2

    # Another series of the study changed: a new version, the series' answer built again.
    await _store(client, [ct_dataset(study, other, instance_number=2)])
    rebuilt = await client.get(path, headers={**JSON, "If-None-Match": tag})
    assert rebuilt.status_code == 304 and rebuilt.headers["etag"] == tag
    assert _kept(app) == 3

    # A new instance of the series: the answer follows at once, with a new tag.
    late = ct_dataset(study, series, instance_number=4)
    await _store(client, [late])
    grown = await client.get(path, headers={**JSON, "If-None-Match": tag})
    assert grown.status_code == 200
    assert _sops(grown)[-1] == late.SOPInstanceUID and len(_sops(grown)) == 4
    assert grown.headers["etag"] != tag

    # A deleted instance is gone from the next answer.
    gone = first[1]
    deleted = await client.delete(
        f"/studies/{study}/series/{series}/instances/{gone.SOPInstanceUID}"
    )
    assert deleted.status_code == 204
    shrunk = await client.get(path, headers=JSON)
    assert gone.SOPInstanceUID not in _sops(shrunk) and len(_sops(shrunk)) == 3

    # The same rows under another public root carry that root in their BulkDataURIs.
    state: AppState = app.state.dicomweb
    key = StudyKey("default", study)
    root = state.settings.root_url
    here = await state.retrieve.study_metadata(key, series, root)
    there = await state.retrieve.study_metadata(key, series, "https://pacs.example/dicomweb")
    assert isinstance(here, MetadataDocument) and isinstance(there, MetadataDocument)
    assert bytes(here) == shrunk.content
    assert b'"BulkDataURI":"https://pacs.example/dicomweb/studies/' in there
    assert there.replace(b"https://pacs.example/dicomweb/", root.encode() + b"/") == here
    assert there.digest != here.digest

    everything = await client.delete(f"/studies/{study}")
    assert everything.status_code == 204
    assert (await client.get(path, headers=JSON)).status_code == 404
    assert (await client.get(f"/studies/{study}/metadata", headers=JSON)).status_code == 404


async def _joined(answer: MetadataDocument | AsyncIterator[bytes]) -> bytes:
    assert not isinstance(answer, MetadataDocument)
    return b"".join([chunk async for chunk in answer])


async def test_issue22_large_metadata_answers_stream_the_same_bytes(
    app: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = generate_uid(), generate_uid()
    await _store(client, [ct_dataset(study, series, instance_number=n) for n in range(5)])
    await _store(client, [ct_dataset(study, generate_uid(), instance_number=1)])
    state: AppState = app.state.dicomweb
    index = state.retrieve.index
    key = StudyKey("default", study)
    root = f"{BASE}/root"

    for series_uid in (series, None):
        whole = await MetadataDocuments(index, 1 << 20).answer(key, series_uid, root)
        assert isinstance(whole, MetadataDocument)
        assert len(orjson.loads(bytes(whole))) == (5 if series_uid else 6)
        # More instances than are listed: streamed from the index as it reads them.
        listed_few = MetadataDocuments(index, 1 << 20, listed_most=2)
        assert await _joined(await listed_few.answer(key, series_uid, root)) == bytes(whole)
        # Larger than a document is built: begun in memory, the rest streamed.
        with monkeypatch.context() as patched:
            patched.setattr(metadata_documents, "_SMALLEST_BUILT", 10)
            patched.setattr(metadata_documents, "_BATCH", 2)
            small = MetadataDocuments(index, 0)
            assert await _joined(await small.answer(key, series_uid, root)) == bytes(whole)
            assert not small._kept.entries

    for documents in (
        MetadataDocuments(index, 1 << 20),
        MetadataDocuments(index, 0, listed_most=1),
    ):
        with pytest.raises(NotFoundError):
            await documents.answer(key, generate_uid(), root)
