"""A bounded, thread-safe LRU of folded adapter branches, shared by every snapshot on one base.

A branch is a copy of the layers an adapter touches with its LoRA update folded in
(:meth:`adaptreg.compose.predict.Predictor._branch`): for MiniLM's top two layers about 3.5 MB
per adapter. Snapshots built one after the other (a hot swap, another alias) mostly serve the
same adapter directories, so they share this cache and fold each adapter once. Past
``max_items`` the least recently used branch is dropped; a snapshot that needs it again folds it
again (milliseconds to a second). A batch that holds a branch keeps it alive until it ends, so
eviction never breaks a request in flight.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any


class BranchCache(MutableMapping):
    """``{(adapter directory, split): branch}`` holding at most ``max_items`` entries (LRU)."""

    def __init__(self, max_items: int):
        if max_items < 1:
            from ..errors import ConfigError

            raise ConfigError(f"max_items == {max_items}, must be >= 1")
        self.max_items = int(max_items)
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

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
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)
                self.evictions += 1

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
            return {"size": len(self._data), "max": self.max_items, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}
