"""A checkpoint whose forward is not finite (weights that overflow it): ranked last under every metric, no
accuracy read off NaN logits, never selected, and warned of on a cached repeat too."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.batching import ScoredSequence, collate
from mashup.config import HalvingConfig, SelectConfig
from mashup.library import Library
from mashup.score_batches import LetterBatch
from mashup.scoring import CheckpointScore, rank
from mashup.selection import select_checkpoints
from tests.selection.helpers import records_for, requests_for
from tests.test_cli import run_cli


def overflowing_copy(adapter: Path, out: Path) -> Path:
    """A copy of a LoRA adapter whose B factors reach float32's largest values: finite weights (registered
    as they are), but a forward through them overflows to inf and NaN."""
    out.mkdir()
    for item in adapter.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    weights = out / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors = {name: t / t.abs().max() * 3e38 if "lora_B" in name else t for name, t in tensors.items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


@pytest.fixture()
def mixed_library(tmp_path, tiny_loras) -> tuple[Path, str]:
    """Two finite adapters and one that overflows; returns the library and the overflowing one's id."""
    huge = overflowing_copy(tiny_loras[0], tmp_path / "huge")
    records = Library(tmp_path / "lib").add([huge, *tiny_loras[1:]])
    return tmp_path / "lib", records[0].id


def test_a_score_that_is_not_finite_has_no_accuracy_and_ranks_last_by_accuracy():
    scores = [CheckpointScore("a", None, "lora", math.nan, 0.75, 8, 0.0),
              CheckpointScore("b", None, "lora", 1.0, 0.25, 8, 0.0),
              CheckpointScore("c", None, "lora", math.inf, 1.0, 8, 0.0)]
    assert scores[0].accuracy is None and scores[2].accuracy is None and scores[1].accuracy == 0.25
    assert [s.id for s in rank(scores, "accuracy")] == ["b", "a", "c"]
    assert [s.id for s in rank(scores, "loss")] == ["b", "a", "c"]


def test_nan_logits_predict_no_choice():
    """An argmax over NaN picks choice 0: it would count as correct wherever the answer is the first."""
    class NanModel(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **_):
            return type("Out", (), {"logits": torch.full((*input_ids.shape, 8), math.nan)})()

    inputs = collate([ScoredSequence((1, 2, 3), 1)] * 2, 0, torch.device("cpu"))
    batch = LetterBatch([0, 1], inputs, torch.tensor([[1, 2], [3, 4]]), torch.ones((2, 2), dtype=torch.bool),
                        torch.tensor([0, 0]))
    _, preds = batch.score(NanModel(), 1)
    assert (preds != 0).all()


def test_select_by_accuracy_never_selects_a_forward_that_is_not_finite(tmp_path, tiny_base, mixed_library, mc_file,
                                                                        capsys, monkeypatch, caplog):
    library, huge = mixed_library
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", library, "--samples", 16,
            "--scoring", "letter", "--metric", "accuracy", "--k", 1, "--json"]
    for attempt in ("scored", "cached"):
        caplog.clear()
        with caplog.at_level("WARNING"):
            out, _ = run_cli(args, capsys, monkeypatch)
        result = json.loads(out)
        last = result["ranking"][-1]
        # strict JSON: a loss that is not finite is null (Python's json would write a bare NaN, which jq refuses)
        assert "NaN" not in out and json.loads(out, parse_constant=lambda name: pytest.fail(name))
        assert last["id"] == huge and last["loss"] is None and last["accuracy"] is None, attempt
        assert huge not in result["selected"] and len(result["selected"]) == 1, attempt
        said = [r.getMessage() for r in caplog.records if huge in r.getMessage()]
        assert len(said) == 1 and "forward is not finite" in said[0] and "never selected" in said[0], attempt
    assert result["stats"]["cached"] == 3, "the repeat read every score from the cache"


def test_fewer_finite_scores_than_k_is_one_error(tmp_path, tiny_base, mixed_library, mc_file, capsys, monkeypatch):
    """With --k the whole pool a NaN would be selected: as with too few usable checkpoints, one error line."""
    library, huge = mixed_library
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", library, "--samples", 8,
            "--scoring", "letter", "--k", 3]
    out, err = run_cli(args, capsys, monkeypatch, expect=1)
    line = [e for e in err.splitlines() if e.startswith("error:")]
    assert out == "" and len(line) == 1 and "Traceback" not in err
    assert "k=3 but only 2 of 3 ranked checkpoint(s) scored a finite loss" in line[0] and huge in line[0]
    assert "lower k (--k)" in line[0], "worded for a config file too"


def test_halving_drops_a_survivor_that_is_not_finite(tmp_path, tiny_base, tiny_loras, mc_file):
    """The schedule keeps 4 of 5 for the whole sample; of the two that overflow, neither is scored further."""
    huge = [overflowing_copy(tiny_loras[i], tmp_path / f"huge{i}") for i in range(2)]
    records = records_for([*tiny_loras, *huge])
    workspace, requests = requests_for(tiny_base, mc_file, 16, "letter")
    config = SelectConfig(samples=16, k=1, selector="halving", cache=False,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=4))
    selection = select_checkpoints(workspace, records, requests, config, None)
    assert [r.candidates for r in selection.stats.rounds] == [5, 3]
    ranking = selection.ranking
    assert [s.n for s in ranking] == [16, 16, 16, 4, 4]
    assert {s.id for s in ranking[3:]} == {r.id for r in records[3:]}
    assert all(math.isfinite(s.loss) for s in ranking[:3]) and not any(math.isfinite(s.loss) for s in ranking[3:])
