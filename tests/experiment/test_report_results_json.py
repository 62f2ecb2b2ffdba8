"""results.json says whether the report is partial and which units it lacks, so a consumer need not read report.md."""

from __future__ import annotations

import json

import pytest

from mashup.experiment import report
from mashup.experiment.report import RESULTS_JSON, write_report
from tests.experiment.synthetic import two_task_config


def _config(tmp_path):
    return two_task_config(out=str(tmp_path), seeds=1, lrs=[1e-3], arms=["scratch"], samples_sweep=[],
                           merge_grid=None)


def test_a_partial_report_says_so_in_results_json(tmp_path) -> None:
    config = _config(tmp_path)
    write_report(tmp_path, config, partial=True)  # no unit recorded yet: every planned one is missing
    results = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert results["partial"] is True
    assert results["missing_units"] and len(results["missing_units"]) == results["planned_units"]
    assert all(isinstance(unit, str) and "/" in unit for unit in results["missing_units"])
    assert "table3" in results


def test_a_complete_report_says_it_is_not_partial(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "missing_units", lambda *args, **kwargs: ([], 3))
    write_report(tmp_path, _config(tmp_path))
    results = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert results["partial"] is False and results["missing_units"] == [] and results["planned_units"] == 3
