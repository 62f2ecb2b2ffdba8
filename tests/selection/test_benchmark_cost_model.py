"""The forward-cost model of ``benchmarks/scoring_cost_model.py``: its fit, the batchings it prices, and
the check that a timed run is the batch it is taken for."""

from pathlib import Path

import pytest


@pytest.fixture
def cost_model(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import scoring_cost_model  # benchmarks/scoring_cost_model.py

    return scoring_cost_model


class FakeSample:
    def __init__(self, batches: dict) -> None:
        self._batches = batches

    def batches(self, start: int, stop: int):
        return self._batches[(start, stop)]


def test_round_slices_score_only_the_new_questions(cost_model):
    assert cost_model.round_slices([(8, 1000), (32, 250), (256, 16)]) == [(0, 8, 1000), (8, 32, 250), (32, 256, 16)]


def test_without_a_fixed_cost_every_batching_costs_its_padded_tokens(cost_model):
    model = cost_model.ForwardModel(a=0.0, b=1.0, floor=0.0)
    batches = [(206, 25), (50, 64)]
    padded = 1000 * (206 * 25 + 50 * 64)
    assert model.engine(batches, 1000, stack_each_batch=False) == pytest.approx(padded)
    assert model.engine(batches, 1000) == pytest.approx(padded)
    assert model.per_batch(batches, 1000) == pytest.approx(padded)
    lengths = [10, 10, 12, 30, 31, 64]
    seconds, cuts = model.cut_by_cost(lengths, 5)
    assert seconds == pytest.approx(5 * sum(lengths))  # every length in a batch of its own: no padding
    assert sum(rows for rows, _ in cuts) == len(lengths)


def test_a_fixed_cost_per_forward_buys_fewer_forwards(cost_model):
    batches = [(206, 25), (50, 64)]  # commonsense_qa's 256 questions, 4 adapters a group on CUDA
    model = cost_model.ForwardModel(a=0.026, b=2e-6, floor=0.043)
    assert cost_model.group_size([206, 50], stack_each_batch=False) == 4
    assert cost_model.group_size([206, 50]) == 20
    # the second batch's 200-row forwards sit at the floor; stacked 20 adapters deep they are a fifth as many
    assert model.engine(batches, 1000) < 0.9 * model.engine(batches, 1000, stack_each_batch=False)
    assert model.per_batch(batches, 1000) < 0.9 * model.engine(batches, 1000, stack_each_batch=False)
    lengths = list(range(10, 74))
    few = len(cost_model.ForwardModel(a=1.0, b=1e-6, floor=0.0).cut_by_cost(lengths, 100)[1])
    many = len(cost_model.ForwardModel(a=1e-4, b=1e-6, floor=0.0).cut_by_cost(lengths, 100)[1])
    assert few < many


def test_packed_forwards_cost_real_tokens_in_as_few_forwards_as_the_budget_allows(cost_model):
    slots = cost_model.SLOTS
    no_fixed = cost_model.ForwardModel(a=0.0, b=1.0, floor=0.0)
    assert no_fixed.packed(300, 1000, budget=10_000) == pytest.approx(1000 * 300)  # no padding priced
    fixed = cost_model.ForwardModel(a=1.0, b=0.0, floor=0.0)
    # 128 adapters x 300 tokens in forwards of at most 10,000: 4 a group; 1,000 adapters are 7 full groups
    # and one of 104 (31,200 tokens: 4 forwards)
    assert 1000 // slots == 7 and fixed.packed(300, 1000, budget=10_000) == pytest.approx(7 * 4 + 4)
    floor = cost_model.ForwardModel(a=0.0, b=1e-9, floor=0.5)
    assert floor.packed(10, 8, budget=10_000) == pytest.approx(0.5)  # one small forward at the floor


def test_fit_recovers_the_model_that_made_the_runs(cost_model):
    truth = cost_model.ForwardModel(a=0.02, b=2e-6, floor=0.04)
    shapes = [((1024, 31),), ((1008, 27),), ((960, 52),), ((1000, 41), (24, 64))]  # forwards: rows, length
    runs = [(forwards, sum(truth.forward(rows, length) for rows, length in forwards)) for forwards in shapes]
    fitted = cost_model.fit(runs, curve=[])
    assert (fitted.a, fitted.b, fitted.floor) == pytest.approx((truth.a, truth.b, truth.floor), rel=1e-6)
    with_curve = cost_model.fit(runs, curve=[{"rows": 256, "finished_s": 0.05}, {"rows": 2048, "finished_s": 0.2}])
    assert with_curve.floor == pytest.approx(0.05)


def test_timed_runs_must_be_the_batches_rebuilt(cost_model):
    sample = FakeSample({(0, 8): ((8, 31),), (8, 32): ((24, 27),)})
    split = {"rounds": [[8, 200, 1.0], [32, 50, 0.5]],
             "forwards": [{"rows": [1024], "copies": 128, "seconds": 0.09},
                          {"rows": [576], "copies": 72, "seconds": 0.06},
                          {"rows": [1008], "copies": 42, "seconds": 0.08},
                          {"rows": [192], "copies": 8, "seconds": 0.04}]}
    runs = cost_model.timed_runs(split, sample)
    assert runs == [(((1024, 31),), 0.09), (((576, 31),), 0.06), (((1008, 27),), 0.08), (((192, 27),), 0.04)]
    windowed = {"rounds": [[200, 8, 0.2]], "forwards": [{"rows": [800, 800], "copies": 8, "seconds": 0.2}]}
    assert cost_model.timed_runs(windowed, FakeSample({(0, 200): ((200, 30),)})) == [(((800, 30), (800, 30)), 0.2)]
    split["forwards"][2]["rows"] = [1000]
    with pytest.raises(ValueError, match="not the batches rebuilt"):
        cost_model.timed_runs(split, sample)
