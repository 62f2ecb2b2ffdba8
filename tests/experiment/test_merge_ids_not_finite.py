"""An experiment's merge units never merge a checkpoint whose selection loss is not finite (``mashup select``
never selects one either); with too few finite candidates a unit stops with one line, not a traceback."""

import math

import pytest

from mashup.errors import MashupError
from mashup.experiment.plan import Context, Unit, merge_checkpoint_ids


class _Config:
    k = 2
    samples = 8
    merge_method = "average"


def _context(losses: dict[str, float]) -> Context:
    ranking = [{"id": i, "task": None, "kind": "lora", "loss": loss, "accuracy": 0.9 if math.isnan(loss) else 0.5,
                "n": 8, "seconds": 1.0}
               for i, loss in sorted(losses.items(), key=lambda item: (not math.isfinite(item[1]), item[1]))]
    unit = Unit("selection", "select", "t", "samples:8")
    return Context(config=_Config(), root="/x", precision="fp32", library="lib",  # type: ignore[arg-type]
                   records={unit.id: {"result": {"ranking": ranking}}})


@pytest.mark.parametrize("arm, seed", [("mashup_loss", None), ("mashup_accuracy", None), ("mashup_random", 0),
                                       ("grid:ties:2", None)])
def test_a_nan_candidate_is_never_merged(arm, seed):
    context = _context({"a": 1.0, "b": math.nan, "c": 2.0})
    ids, _ = merge_checkpoint_ids(Unit("merge", "merge", "t", arm, seed=seed), context)
    assert sorted(ids) == ["a", "c"]


def test_too_few_finite_candidates_is_one_line():
    context = _context({"a": 1.0, "b": math.nan})
    for arm, seed in (("mashup_loss", None), ("mashup_random", 0)):
        with pytest.raises(MashupError, match="needs 2 checkpoints, but only 1 of the target's candidates scored a "
                           "finite loss"):
            merge_checkpoint_ids(Unit("merge", "merge", "t", arm, seed=seed), context)
