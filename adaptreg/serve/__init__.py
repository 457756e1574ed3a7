"""``adaptreg serve``: an HTTP JSON service over one frozen base and every task in a registry.

Modules, one idea each:

* :mod:`.settings`  -- :class:`ServeSettings`, every knob with its help text (the CLI's options come from it)
* :mod:`.cache`     -- :class:`BranchCache`, the bounded LRU of adapter branches
* :mod:`.snapshot`  -- immutable snapshots (a Predictor + the versions it serves) and the watcher that swaps them
* :mod:`.batcher`   -- the asyncio micro-batcher in front of the one inference thread
* :mod:`.metrics`   -- counters and histograms in Prometheus' text format
* :mod:`.app`       -- the FastAPI application, :func:`adaptreg.serve.app.create_app`

Only this package's settings are imported here: FastAPI, torch and the registry load with :mod:`.app`.
"""

from __future__ import annotations

from .settings import ServeSettings

__all__ = ["ServeSettings"]
