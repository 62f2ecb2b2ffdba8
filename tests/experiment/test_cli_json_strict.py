"""`mashup experiment --json` writes strict JSON (a value that is not finite as null), as every other command."""

import json
import math

from mashup.experiment.plan import Unit
from mashup.experiment.runner import PlannedUnit
from tests.test_cli import run_cli


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_dry_run_estimate_that_is_not_finite_is_null(capsys, monkeypatch):
    import mashup.experiment

    planned = [PlannedUnit(Unit("base", "eval", "t", "base"), math.nan, "new")]
    monkeypatch.setattr(mashup.experiment, "plan_experiment", lambda config: planned)
    out, _ = run_cli(["experiment", "--profile", "cpu-mini", "--dry-run", "--json"], capsys, monkeypatch)
    data = _strict(out)
    assert data["units"][0]["estimate_seconds"] is None and data["estimate_seconds"] is None
