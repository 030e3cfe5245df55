"""A per-process LRU of bytes by key, bounded in bytes (rendered images, derived data, metadata).

Nothing in it is shared between processes or is ever the only copy: it saves a round trip to
the object store or the index for what a viewer asks for again and again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["MemoryCache"]


# What an entry costs beside its bytes and its key's characters (the dict slot, the ordered
# dict's link, the two objects' headers): counted, so that many small entries with long keys
# stay within the limit too.
_ENTRY_COST = 160


def _cost(key: str, data: bytes) -> int:
    return len(data) + len(key) + _ENTRY_COST


@dataclass(slots=True)
class MemoryCache:
    """Bytes by key, least recently used first out, at most `limit` bytes counting each entry's
    key and upkeep (an entry larger than a quarter of it is not kept: it would push out
    everything else)."""

    limit: int
    size: int = 0
    entries: OrderedDict[str, bytes] = field(default_factory=OrderedDict)

    def get(self, key: str) -> bytes | None:
        data = self.entries.get(key)
        if data is not None:
            self.entries.move_to_end(key)
        return data

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def put(self, key: str, data: bytes) -> None:
        cost = _cost(key, data)
        if cost > self.limit // 4 or key in self.entries:
            return
        self.entries[key] = data
        self.size += cost
        while self.size > self.limit:
            dropped_key, dropped = self.entries.popitem(last=False)
            self.size -= _cost(dropped_key, dropped)

    def discard_prefix(self, prefix: str) -> None:
        """Forget every entry whose key starts with `prefix` (deleted data)."""
        for key in [key for key in self.entries if key.startswith(prefix)]:
            self.size -= _cost(key, self.entries.pop(key))
