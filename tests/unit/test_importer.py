"""The import pipeline's bookkeeping: the studies stored into, handed on for the audit trail."""

from __future__ import annotations

import pytest

from dicomweb_server.services import importer


def test_studies_are_handed_on_one_at_a_time_within_a_bounded_tally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importer, "_OPEN_STUDIES", 2)
    handed: list[tuple[str, int]] = []
    tally = importer._StudyTally(lambda study, count: handed.append((study, count)))

    for study in ["1.1", "1.1", "1.2", "1.1", "1.3", "1.3", "1.4", "1.2"]:
        tally.add(study)
    assert handed == [("1.2", 1), ("1.1", 3), ("1.3", 2)]  # the least recent first
    tally.close()

    assert handed == [("1.2", 1), ("1.1", 3), ("1.3", 2), ("1.4", 1), ("1.2", 1)]
