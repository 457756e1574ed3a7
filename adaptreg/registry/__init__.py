"""The adapter registry, kept in MLflow: one tracking run and one model version per registration.

A location is a directory (an SQLite database ``mlflow.db`` plus ``artifacts/``), an SQL
database URI (``sqlite:///...``, ``postgresql://...``) or an MLflow tracking server
(``http(s)://...``). Each task is an MLflow *registered model* of the same name; each
registration logs a run in the experiment ``adaptreg`` (parameters, per-epoch and final metrics,
the confusion-matrix plot, the adapter directory under ``adapter/``) and creates a model version
whose source is that ``adapter/`` directory. See ``docs/registry.md`` for the format.

The ready protocol: a version is created with the tag ``adaptreg.status=pending`` and becomes
``ready`` only after its files are stored and verified. Every lookup ignores versions that are
not ready, so a registration killed at any point leaves nothing that a lookup returns.

Modules, one job each:

* :mod:`~adaptreg.registry.location`: where a registry lives; moving or copying its folder.
* :mod:`~adaptreg.registry.records`: adaptreg's tag names and the version record built from tags.
* :mod:`~adaptreg.registry.store`: the one write path (lock, retries, ready protocol).
* :mod:`~adaptreg.registry.fast`: read-only sqlite3 access to a local registry (no ``import mlflow``).
* :mod:`~adaptreg.registry.api`: the :class:`Registry` facade (register, promote, archive, reads).
* :mod:`~adaptreg.registry.render`: tables and the compare plot.
* :mod:`~adaptreg.registry.doctor`: checks and repairs (``adaptreg doctor``).
"""

from .api import Registry, as_registry
from .location import (DB_NAME, DEFAULT_LOCATION, ENV_ARTIFACTS, ENV_CACHE, ENV_LOCATION, Location, default_cache_dir,
                       resolve_location)
from .records import (ADAPTER_PATH, ARCHIVED_TAG, COMPARE_COLUMNS, DEFAULT_ALIAS, EXPERIMENT, FAILED, LOWER_IS_BETTER,
                      MANAGED_TAG, METRIC_TAG, PENDING, PICKLE_SUFFIXES, PLOT_FILE, READY, ROUTE_TAG, STATUS_TAG, TAG,
                      validate_alias, validate_task_name)
from .render import plot_compare, render_table
from .store import Store, nonfinite_tensors

__all__ = [
    "Registry", "as_registry", "Store", "Location", "resolve_location", "default_cache_dir", "nonfinite_tensors",
    "validate_alias", "validate_task_name", "render_table", "plot_compare",
    "ADAPTER_PATH", "ARCHIVED_TAG", "COMPARE_COLUMNS", "DB_NAME", "DEFAULT_ALIAS", "DEFAULT_LOCATION", "ENV_ARTIFACTS",
    "ENV_CACHE", "ENV_LOCATION", "EXPERIMENT", "FAILED", "LOWER_IS_BETTER", "MANAGED_TAG", "METRIC_TAG", "PENDING",
    "PICKLE_SUFFIXES", "PLOT_FILE", "READY", "ROUTE_TAG", "STATUS_TAG", "TAG",
]
