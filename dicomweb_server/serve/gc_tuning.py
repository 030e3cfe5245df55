"""Tune Python's garbage collector once per worker, after the app has started.

A search answer builds thousands of small dicts; with Python's default threshold they set off
collections that walk the whole heap (measured: 130 ms → 40 ms for 1,400 studies). Request
objects hold no reference cycles worth collecting promptly, and what start-up built (modules,
codecs, pools) never needs rescanning, so it is frozen out of collection.
"""

from __future__ import annotations

import gc

__all__ = ["tune_garbage_collector"]

_frozen = False


def tune_garbage_collector(young_threshold: int) -> None:
    """Collect less often, and never rescan what start-up built (0: leave Python's default)."""
    global _frozen
    if young_threshold <= 0:
        return
    if not _frozen:  # once per process: apps made again in one process (tests) add nothing
        gc.collect()
        gc.freeze()
        _frozen = True
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
