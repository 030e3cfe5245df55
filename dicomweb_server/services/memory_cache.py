"""A per-process LRU of bytes by key, bounded in bytes (rendered images, derived data, metadata).

Nothing in it is shared between processes or is ever the only copy: it saves a round trip to
the object store or the index for what a viewer asks for again and again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["MemoryCache"]


@dataclass(slots=True)
class MemoryCache:
    """Bytes by key, least recently used first out, at most `limit` bytes (an entry larger
    than a quarter of it is not kept: it would push out everything else)."""

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
        if len(data) > self.limit // 4 or key in self.entries:
            return
        self.entries[key] = data
        self.size += len(data)
        while self.size > self.limit:
            _, dropped = self.entries.popitem(last=False)
            self.size -= len(dropped)

    def discard_prefix(self, prefix: str) -> None:
        """Forget every entry whose key starts with `prefix` (deleted data)."""
        for key in [key for key in self.entries if key.startswith(prefix)]:
            self.size -= len(self.entries.pop(key))
