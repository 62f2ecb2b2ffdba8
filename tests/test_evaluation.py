import random

import pytest
import torch

from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings, ScoringPlan, stack_windows
from mashup.models import load_model
from mashup.score_batches import plan_batch_rows


def _requests(n: int, seed: int = 0) -> list[EncodedRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = tuple(rng.randrange(3, 60) for _ in range(rng.choice([3, 6, 25])))
        choices = tuple(tuple(rng.randrange(3, 60) for _ in range(rng.choice([1, 2, 9]))) for _ in range(3))
        out.append(EncodedRequest(prompt, choices, tuple(len(c) for c in choices), rng.randrange(3)))
    return out


@pytest.mark.fp32
@pytest.mark.parametrize("with_accuracy", [False, True])
def test_scores_do_not_depend_on_how_requests_are_batched(tiny_base, with_accuracy):
    """Each request's loss (and prediction) is its own, whatever batch, padding or budget it lands in."""
    model = load_model(tiny_base).eval()
    requests = _requests(30)
    runs = [ScoringPlan(requests, ScoreSettings(size, torch.device("cpu"), False, 0), with_accuracy).run(model)
            for size in (1, 4, 64)]
    for losses, preds in runs[1:]:
        assert torch.allclose(losses, runs[0][0], atol=1e-5)
        assert preds is None if not with_accuracy else torch.equal(preds, runs[0][1])


@pytest.mark.parametrize("training", ["none", "root", "one submodule"])
def test_scoring_runs_every_module_in_eval_mode_and_restores_the_modes(tiny_base, training):
    """A model wholly in eval mode (selection's) is left alone; any module in training mode is switched for
    the scoring and the model's mode restored after, as ``model.train(was_training)`` leaves it."""
    model = load_model(tiny_base).eval()
    if training == "root":
        model.train()
    elif training == "one submodule":
        model.model.layers[0].train()
    seen = []
    model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(module.training))
    root_mode = model.training
    ScoringPlan(_requests(4), ScoreSettings(4, torch.device("cpu"), False, 0), False).run(model)
    assert seen and not any(seen)
    assert all(module.training == root_mode for module in model.modules())


@pytest.mark.parametrize("with_accuracy", [False, True])
@pytest.mark.parametrize("single_token", [False, True])
def test_plan_batch_rows_are_the_plans_batches(with_accuracy, single_token):
    requests = _requests(40, seed=3)
    if single_token:  # letter answers: one token per choice
        requests = [EncodedRequest(r.prompt_ids, tuple(c[:1] for c in r.continuation_ids), (1, 1, 1), r.answer)
                    for r in requests]
    settings = ScoreSettings(8, torch.device("cpu"), False, 0)
    plan = ScoringPlan(requests, settings, with_accuracy)
    assert plan_batch_rows(requests, 8, with_accuracy) == [list(batch.rows) for batch in plan.batches]


def test_stack_windows_fill_a_forward_and_split_evenly():
    assert stack_windows(20, 206, None) == [(0, 20)]
    assert stack_windows(20, 50, 1024) == [(0, 20)]
    assert stack_windows(20, 206, 1024) == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4)]
    assert stack_windows(128, 9, 1024) == [(0, 64), (64, 64)]  # not 113 and 15
    assert stack_windows(5, 300, 256) == [(i, 1) for i in range(5)]  # a batch larger than a forward: one at a time
    assert stack_windows(7, 8, 24) == [(0, 3), (3, 2), (5, 2)]


def test_run_scores_each_window_with_the_copies_it_selects(tiny_base, monkeypatch):
    """``select(first, count)`` comes before each forward, which scores ``count`` copies into rows first on."""
    from mashup import score_batches

    model = load_model(tiny_base).eval()
    plan = ScoringPlan(_requests(12, seed=1), ScoreSettings(8, torch.device("cpu"), False, 0), False)
    plain, _ = plan.run(model)
    windows, scored = [], []
    original = score_batches.AnswerBatch.score

    def score(batch, model, copies):  # marks each copy's losses with its window's first copy
        scored.append((len(batch.rows), copies))
        losses, preds = original(batch, model, copies)
        return losses + windows[-1][0], preds

    monkeypatch.setattr(score_batches.AnswerBatch, "score", score)
    with pytest.raises(ValueError, match="needs select"):
        plan.run(model, copies=5, stack_rows=16)
    losses, _ = plan.run(model, copies=5, stack_rows=16, select=lambda first, count: windows.append((first, count)))
    assert [rows * copies for rows, copies in scored] == plan.forward_rows(5, 16)
    assert len(windows) == len(scored) > len(plan.batches)
    for batch in plan.batches:
        firsts = [first for first, count in stack_windows(5, len(batch.rows), 16) for _ in range(count)]
        marks = torch.tensor(firsts, dtype=losses.dtype)[:, None]
        assert torch.allclose(losses[:, batch.rows] - marks, plain[:, batch.rows].expand(5, -1), atol=1e-5)
