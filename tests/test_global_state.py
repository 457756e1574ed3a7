"""The library leaves global state alone: matplotlib's backend, transformers' verbosity and
progress bars, warning filters and other libraries' log levels (the CLI may set them; a library
imported into someone's application must not)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest


def test_loading_a_base_restores_transformers_verbosity_and_warning_filters(tiny_base):
    from transformers.utils import logging as tlog

    from adaptreg.base import load_base

    tlog.set_verbosity_info()
    tlog.enable_progress_bar()
    filters = list(warnings.filters)
    try:
        load_base(str(tiny_base))
        assert tlog.get_verbosity() == tlog.INFO and tlog.is_progress_bar_enabled()
        assert warnings.filters == filters
    finally:
        tlog.set_verbosity_warning()


def test_plots_do_not_switch_the_matplotlib_backend(tmp_path):
    code = f"""
import matplotlib
matplotlib.use("svg")
from adaptreg.train import plot_confusion
from adaptreg.continual.report import plot_heatmap
from adaptreg.registry.render import plot_compare
plot_confusion([[3, 1], [0, 4]], ["a", "b"], {str(tmp_path / 'c.png')!r})
plot_heatmap([[0.9, None], [0.8, 0.7]], ["a", "b"], {str(tmp_path / 'r.png')!r}, "R")
plot_compare([{{"task": "a", "version": 1, "acc": 0.5}}], "acc", {str(tmp_path / 'p.png')!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in ("c.png", "r.png", "p.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_opening_a_registry_leaves_other_libraries_log_levels(tmp_path):
    """adaptreg sets no logger levels; MLflow itself sets some on import and on first use of an
    SQL store, so the baseline is plain MLflow doing the same."""
    from mlflow import MlflowClient

    from adaptreg.registry import Registry

    uri = f"sqlite:///{tmp_path / 'plain.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    names = ("mlflow", "alembic", "sqlalchemy", "urllib3")
    before = {n: logging.getLogger(n).level for n in names}
    Registry(tmp_path / "reg").client  # noqa: B018 - creates the tables
    assert {n: logging.getLogger(n).level for n in names} == before


def test_result_version_is_the_number_with_a_deprecation_path():
    from adaptreg.artifact import version_number

    v = version_number({"version": 3, "path": "/x"})
    assert v == 3 and int(v) == 3 and f"v{v}" == "v3"
    with pytest.warns(DeprecationWarning, match="result.record"):
        assert v["path"] == "/x"
    assert version_number(None) is None
