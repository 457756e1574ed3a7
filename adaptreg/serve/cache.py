"""A bounded, thread-safe LRU of adapter branches, shared by every snapshot on one base.

A branch is what :meth:`adaptreg.compose.predict.Predictor._branch` builds for an adapter: its
low-rank matrices (a LoRA adapter on a BERT base: about 100 KB for MiniLM, rank 8, two layers) or
a copy of the layers it touches with the update folded in (DoRA, other bases: about 3.5 MB per
adapter). Snapshots built one after the other (a hot swap, another alias) mostly serve the
same adapter directories, so they share this cache and load each adapter once. Past
``max_items`` the least recently used branch is dropped; a snapshot that needs it again loads it
again (milliseconds to a second). A batch that holds a branch keeps it alive until it ends, so
eviction never breaks a request in flight.

Keys can be **pinned** (:meth:`BranchCache.pin`): ``adaptreg serve`` pins the branches of the
default alias's snapshot (production), so traffic to other aliases only evicts other aliases'
branches. Eviction takes the least recently used unpinned entry; only when every entry is pinned
(more pinned branches than ``max_items``) does it take the least recently used pinned one: the
bound on memory always holds, and pinning is a priority, not a guarantee beyond it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any


class BranchCache(MutableMapping):
    """``{(adapter directory, split): branch}`` holding at most ``max_items`` entries (LRU, pinned keys last)."""

    def __init__(self, max_items: int):
        if max_items < 1:
            from ..errors import ConfigError

            raise ConfigError(f"max_items == {max_items}, must be >= 1")
        self.max_items = int(max_items)
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pinned: frozenset[Any] = frozenset()
        self.hits = self.misses = self.evictions = 0

    def pin(self, keys: Any) -> None:
        """Evict these keys only when every entry is pinned; replaces the previous pinned set.

        Keys need not be present (a key set later is pinned from then on).
        """
        with self._lock:
            self._pinned = frozenset(keys)
            self._evict()

    @property
    def pinned(self) -> frozenset[Any]:
        return self._pinned

    def _evict(self) -> None:  # under self._lock
        while len(self._data) > self.max_items:
            victim = next((k for k in self._data if k not in self._pinned), None)
            if victim is None:  # all pinned: the least recently used pinned one goes
                victim = next(iter(self._data))
            del self._data[victim]
            self.evictions += 1

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return default

    def __getitem__(self, key: Any) -> Any:
        with self._lock:
            value = self._data[key]
            self._data.move_to_end(key)
            return value

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._evict()

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            del self._data[key]

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._data

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._data), "max": self.max_items, "pinned": len(self._pinned),
                    "pinned_loaded": sum(1 for k in self._data if k in self._pinned), "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions}
