"""The honesty rules of the analysis: choices on validation, reports on test, parity seed by seed."""

from __future__ import annotations

import pytest

from mashup.experiment.analysis import accuracy_cell, average_ranks, best_lr, chosen_runs, convergence, train_runs
from tests.experiment.synthetic import as_records, record, run


def test_the_lr_is_chosen_on_validation_even_when_another_wins_on_test():
    records = as_records(
        run("t", "scratch", 0, 1e-4, [(0, 0.3, 0), (10, 0.50, 10)], validation=0.62),
        run("t", "scratch", 1, 1e-4, [(0, 0.3, 0), (10, 0.52, 10)], validation=0.60),
        run("t", "scratch", 0, 1e-3, [(0, 0.3, 0), (10, 0.70, 10)], validation=0.55),  # best on test
        run("t", "scratch", 1, 1e-3, [(0, 0.3, 0), (10, 0.72, 10)], validation=0.57),
    )
    runs = train_runs(records, "t", "scratch")
    test_best = max(runs, key=lambda lr: sum(r.test for r in runs[lr]))
    assert test_best == 1e-3 and best_lr(runs) == 1e-4
    cell = accuracy_cell(records, "t", "scratch")
    assert cell.mean == pytest.approx(0.51) and cell.std == pytest.approx(0.01) and cell.n == 2


def test_validation_ties_go_to_the_lower_validation_loss_then_the_smaller_lr():
    records = as_records(run("t", "scratch", 0, 1e-4, [(0, 0.3, 0), (4, 0.4, 4)], 0.5, validation_loss=2.0),
                         run("t", "scratch", 0, 1e-3, [(0, 0.3, 0), (4, 0.6, 4)], 0.5, validation_loss=1.0),
                         run("t", "scratch", 0, 5e-3, [(0, 0.3, 0), (4, 0.6, 4)], 0.5, validation_loss=1.0))
    assert best_lr(train_runs(records, "t", "scratch")) == 1e-3


def test_the_oracle_picks_its_merge_and_lr_on_validation():
    records = as_records(run("t", "oracle:0", 0, 1e-4, [(0, 0.3, 0), (4, 0.9, 4)], validation=0.4),
                         run("t", "oracle:1", 0, 1e-4, [(0, 0.3, 0), (4, 0.5, 4)], validation=0.7),
                         run("t", "oracle:1", 0, 1e-3, [(0, 0.3, 0), (4, 0.6, 4)], validation=0.6))
    arm, lr, runs = chosen_runs(records, "t", "oracle", ["oracle:0", "oracle:1"])
    assert (arm, lr, [r.test for r in runs]) == ("oracle:1", 1e-4, [0.5])


def _parity_records(mashup_curves):
    scratch = [run("t", "scratch", s, 1e-4, [(0, 0.30, 0), (5, 0.55, 50), (10, 0.60, 100)], 0.6) for s in (0, 1)]
    mashup = [run("t", "mashup_loss", s, 1e-4, curve, 0.6) for s, curve in enumerate(mashup_curves)]
    extra = [record("select", "t", "samples:16", {"selection_uncached": 12.0}),
             record("merge", "t", "mashup_loss", {"merge_seconds": 3.0, "test": {"accuracy": 0.5}})]
    return as_records(*scratch, *mashup, *extra)


def test_convergence_is_per_seed_against_the_scratch_final_with_the_overhead():
    records = _parity_records([[(0, 0.50, 0), (5, 0.595, 40), (10, 0.65, 80)],   # 99% of 0.60 at step 5
                               [(0, 0.61, 0), (5, 0.62, 40), (10, 0.63, 80)]])   # already at step 0
    mashup = convergence(records, "t", "mashup_loss", samples=16)
    assert mashup.p99 == pytest.approx((0.5 + 0.0) / 2) and mashup.p100 == pytest.approx((1.0 + 0.0) / 2)
    assert mashup.seconds_p99 == pytest.approx(((12 + 3 + 40) + (12 + 3 + 0)) / 2)
    assert mashup.scratch_seconds == 100
    scratch = convergence(records, "t", "scratch", samples=16)
    assert scratch.p99 == 1.0 and scratch.seconds_p99 == 100  # scratch reaches 99% of its own final at the end


def test_convergence_is_none_when_any_seed_never_gets_there():
    records = _parity_records([[(0, 0.50, 0), (10, 0.65, 80)], [(0, 0.50, 0), (10, 0.59, 80)]])  # 0.59 < 0.594
    result = convergence(records, "t", "mashup_loss", samples=16)
    assert result.p99 is None and result.p100 is None and result.seconds_p99 is None


def test_average_ranks_share_ties():
    assert average_ranks({"a": 0.7, "b": 0.5, "c": 0.7, "d": 0.1}) == {"a": 1.5, "c": 1.5, "b": 3.0, "d": 4.0}


def test_early_drop_is_the_largest_fall_below_the_init_in_the_first_half():
    from mashup.experiment.jobs import early_drop

    curve = [{"step": s, "accuracy": a} for s, a in [(0, 0.57), (4, 0.50), (8, 0.38), (12, 0.55), (24, 0.30),
                                                     (40, 0.60)]]
    assert early_drop(curve, 40) == {"drop": pytest.approx(0.19), "step": 8, "init_accuracy": 0.57}
    rising = [{"step": s, "accuracy": a} for s, a in [(0, 0.5), (4, 0.6), (8, 0.7)]]
    assert early_drop(rising, 8) == {"drop": 0.0, "step": None, "init_accuracy": 0.5}
