"""The docstring examples of the modules whose examples run without a model (they are documentation: they must
stay true)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["schema", "calibration_result", "fingerprint", "atomic", "calibration_settings", "calibration_stats", "crossings", "configfile", "lpips_metric", "manifest", "metric_registry", "plan", "plan_values", "cli", "sweep_writer", "store", "errors", "images"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"img2img_lab.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
