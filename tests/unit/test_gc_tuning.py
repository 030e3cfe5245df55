"""The collector tuning app.py applies at startup."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dicomweb_server.serve.gc_tuning import tune_garbage_collector


@pytest.fixture
def restore_threshold() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_raises_the_young_threshold_and_keeps_the_older_ones(restore_threshold: None) -> None:
    gc.set_threshold(700, 11, 12)
    tune_garbage_collector(20_000)
    assert gc.get_threshold() == (20_000, 11, 12)
    assert gc.get_freeze_count() > 0


def test_zero_keeps_the_default(restore_threshold: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_garbage_collector(0)
    assert gc.get_threshold() == (700, 10, 10)
