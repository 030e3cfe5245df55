"""Issue 22: whole QIDO answers scoped to one study, kept per process by the study's version.

A study's series list, a series' instance list and the study found by its UID are answered
from memory when asked again, and follow every change at once: a store into the study, a
delete, the same study stored into another site (the enterprise root searches both), the root
asked at and the return keys asked for. Rows of searches over many studies are built once per
study version. Both backend pairs.
"""

from __future__ import annotations

from typing import Any

import httpx
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from pydicom.dataset import Dataset
from starlette.applications import Starlette

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.query import Query
from dicomweb_server.index import rows
from dicomweb_server.index.base import SearchPage
from dicomweb_server.web.state import AppState

BASE = "http://testserver/dicomweb"
JSON = {"Accept": "application/dicom+json"}


async def _store(client: httpx.AsyncClient, root: str, datasets: list[Dataset]) -> None:
    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
    stored = await client.post(
        f"{root}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert stored.status_code == 200, stored.text


def _kept(app: Starlette) -> int:
    state: AppState = app.state.dicomweb
    return len(state.search._whole.entries)


class _CountedSearches:
    """The app's search service's index, counting the searches that reach it."""

    def __init__(self, app: Starlette) -> None:
        service = app.state.dicomweb.search
        self._inner = service.index
        self.count = 0
        service.index = self

    async def search(self, query: Query) -> SearchPage:
        self.count += 1
        return await self._inner.search(query)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _rows(client: httpx.AsyncClient, url: str) -> list[dict[str, dict[str, list[object]]]]:
    response = await client.get(url, headers=JSON)
    assert response.status_code == 200, response.text
    return list(response.json())


def _values(rows: list[dict[str, dict[str, list[object]]]], tag: str) -> list[object]:
    return [row[tag]["Value"][0] for row in rows]


async def test_issue22_answers_scoped_to_one_study_follow_every_change(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    study, first, second = uid(), uid(), uid()
    await _store(
        client,
        BASE,
        [
            ct_dataset(study=study, series=first, instance_number=1),
            ct_dataset(study=study, series=first, instance_number=2),
            ct_dataset(study=study, series=second, instance_number=1),
        ],
    )
    site = f"{BASE}/sites/default"
    series_list = f"{site}/studies/{study}/series"
    instances = f"{site}/studies/{study}/series/{second}/instances"
    by_uid = f"{site}/studies?StudyInstanceUID={study}"

    listed = await _rows(client, series_list)
    assert sorted(_values(listed, "0020000E")) == sorted([first, second])  # type: ignore[type-var]
    assert await _rows(client, series_list) == listed
    found = await _rows(client, by_uid)
    assert _values(found, "00201208") == [3]
    assert _values(await _rows(client, instances), "00200013") == [1]
    kept = _kept(app)
    assert kept == 3
    assert await _rows(client, by_uid) == found
    assert _kept(app) == kept  # asked again: the same entries

    # A store into the study: every answer follows at once.
    late = ct_dataset(study=study, series=second, instance_number=2)
    await _store(client, BASE, [late])
    assert _values(await _rows(client, by_uid), "00201208") == [4]
    grown = await _rows(client, series_list)
    counts = dict(zip(_values(grown, "0020000E"), _values(grown, "00201209"), strict=True))
    assert counts == {first: 2, second: 2}
    assert _values(await _rows(client, instances), "00200013") == [1, 2]

    # Return keys, and the root asked at, are part of what is kept.
    bits = await _rows(client, f"{instances}?includefield=00280101")  # from each instance
    assert _values(bits, "00280101") == [late.BitsStored, late.BitsStored]
    assert all("00280101" not in row for row in await _rows(client, instances))
    everywhere = await _rows(client, f"{BASE}/studies/{study}/series/{second}/instances")
    urls = _values(everywhere, "00081190")
    assert urls == [f"{instances}/{sop}" for sop in _values(everywhere, "00080018")]
    assert all(str(url).startswith(f"{site}/") for url in urls)

    # A delete: gone from the next answer.
    deleted = await client.delete(f"{site}/studies/{study}/series/{first}")
    assert deleted.status_code == 204
    assert _values(await _rows(client, series_list), "0020000E") == [second]
    assert _values(await _rows(client, by_uid), "00201208") == [2]

    # The same study stored into a second site: the enterprise root finds both copies.
    await app.state.dicomweb.sites.add_site("annex", "test site annex", "")
    at_root = f"{BASE}/studies?StudyInstanceUID={study}"
    assert len(await _rows(client, at_root)) == 1
    await _store(client, f"{BASE}/sites/annex", [ct_dataset(study=study, series=uid())])
    both = await _rows(client, at_root)
    assert sorted(map(str, _values(both, "00081190"))) == [
        f"{BASE}/sites/annex/studies/{study}",
        f"{site}/studies/{study}",
    ]
    assert _values(await _rows(client, by_uid), "00201208") == [2]  # the site's own copy

    # The whole study deleted: nothing is found, not a kept answer.
    assert (await client.delete(f"{site}/studies/{study}")).status_code == 204
    assert await _rows(client, by_uid) == []
    assert await _rows(client, series_list) == []
    assert len(await _rows(client, at_root)) == 1


async def test_issue22_worklist_rows_are_built_once_per_study_version_and_follow_changes(
    backend: str, app: Starlette, client: httpx.AsyncClient
) -> None:
    """A search over many studies (not one study's answer) reads the page's keys, builds
    only rows it has not built for that study version, and never answers an older row. On
    SQLite the whole answer is kept by the index's change count (asked again: one point
    query); PostgreSQL has no such count and builds the answer from its kept rows."""
    patient = f"P-{uid()[-12:]}"
    studies = [uid(), uid()]
    await _store(
        client,
        BASE,
        [ct_dataset(study=s, patient_id=patient, instance_number=1) for s in studies],
    )
    worklist = f"{BASE}/studies?PatientID={patient}"
    kept = rows._shared_rows[Level.STUDY]

    searches = _CountedSearches(app)
    answers = _kept(app)
    first = await _rows(client, worklist)
    assert sorted(_values(first, "0020000D")) == sorted(studies)  # type: ignore[type-var]
    assert _values(first, "00201208") == [1, 1]
    assert searches.count == 1
    assert _kept(app) == answers  # asked once: not kept whole yet
    built = len(kept)
    assert await _rows(client, worklist) == first
    assert len(kept) == built  # asked again: no row built again
    assert searches.count == 2
    kept_whole = backend == "embedded"
    assert _kept(app) == answers + (1 if kept_whole else 0)  # asked again: kept on SQLite
    assert await _rows(client, worklist) == first
    assert searches.count == (2 if kept_whole else 3)  # from memory: no search

    # A store into one study: that study's row is built anew, the other one is not.
    await _store(
        client, BASE, [ct_dataset(study=studies[1], patient_id=patient, instance_number=2)]
    )
    grown = await _rows(client, worklist)
    counts = dict(zip(_values(grown, "0020000D"), _values(grown, "00201208"), strict=True))
    assert counts == {studies[0]: 1, studies[1]: 2}
    assert _kept(app) == answers + (1 if kept_whole else 0)  # a new count: asked once
    assert len(kept) == built + 1 or len(kept) == rows._PARSED_KEPT

    # A delete of a whole study (its row goes, no study row is rewritten): gone from the
    # next page, kept answers or not.
    assert (await client.delete(f"{BASE}/studies/{studies[0]}")).status_code == 204
    assert _values(await _rows(client, worklist), "0020000D") == [studies[1]]
    assert await _rows(client, f"{BASE}/studies?StudyInstanceUID={studies[0]}") == []
