import random

import pytest
import torch

from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings, ScoringPlan
from mashup.models import load_model


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
