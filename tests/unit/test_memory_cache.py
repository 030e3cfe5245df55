"""The per-process LRU (services/memory_cache.py): bounded in bytes, keys and upkeep counted."""

from __future__ import annotations

import sys

from dicomweb_server.services.memory_cache import MemoryCache


def test_small_entries_with_long_keys_stay_within_the_limit() -> None:
    """Counting values alone, 100,000 two-byte answers under 1 KB keys were 'within' 64 KiB
    while holding 100 MB of keys."""
    cache = MemoryCache(64 << 10)
    for n in range(100_000):
        cache.put(f"{n:08d}" + "k" * 1_000, b"[]")
    assert cache.size <= cache.limit
    held = sum(sys.getsizeof(key) + sys.getsizeof(value) for key, value in cache.entries.items())
    assert held <= cache.limit
    assert 0 < len(cache.entries) < 70


def test_least_recently_used_goes_first_and_discarding_gives_back_its_share() -> None:
    cache = MemoryCache(10_000)
    for name in "abcd":
        cache.put(name, bytes(2_000))
    assert cache.get("a") is not None  # used: now the most recent
    cache.put("e", bytes(2_000))
    assert list(cache.entries) == ["c", "d", "a", "e"]  # b went first
    size = cache.size
    cache.discard_prefix("a")
    assert cache.size < size and "a" not in cache
    for key in list(cache.entries):
        cache.discard_prefix(key)
    assert cache.size == 0


def test_an_entry_over_a_quarter_of_the_limit_is_not_kept() -> None:
    cache = MemoryCache(8_000)
    cache.put("big", bytes(2_000))  # with its upkeep, over 2,000
    assert "big" not in cache and cache.size == 0
    cache.put("fits", bytes(1_500))
    assert "fits" in cache
