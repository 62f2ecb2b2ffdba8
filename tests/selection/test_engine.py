import dataclasses
import json
import shutil

import pytest
import torch

import mashup.selection.engine as engine_module
from mashup.evaluation import score_requests
from mashup.models import attach_adapter, load_model
from mashup.selection.engine import (
    CPU_LARGE_MODEL_GROUP_ROWS,
    CUDA_GROUP_ROWS,
    GROUP_ROWS,
    ScoringEngine,
    default_adapters_per_forward,
)
from mashup.selection.example_scores import forward_tokens
from tests.selection.helpers import records_for, requests_for
from tests.tiny import save_tiny_lora


def _tolerance(settings) -> dict:
    """fp32: equal to rounding. bf16: the same sums round apart: the reference encodes a prompt once for all
    choices, and the slots add their update to the base output in one fused matmul (one rounding where PEFT's
    LoRA layer rounds three times). Seen: up to 3e-4 here, 9.5e-4 in benchmarks/selection.py's tiny run; a
    misplaced slot or a lost scale is off by far more than 5e-3."""
    return {"rel": 5e-3} if settings.bf16 else {"abs": 1e-5}


def _reference(base, path, requests, settings, full=False):
    """Per-example losses the plain way: a fresh model with the adapter attached through PEFT."""
    model = load_model(path) if full else attach_adapter(load_model(base), path, trainable=False)
    return score_requests(model.to(settings.device).eval(), requests, settings)


@pytest.mark.parametrize("with_accuracy", [True, False])
@pytest.mark.parametrize("scoring", ["letter", "cloze"])
@pytest.mark.parametrize("group", [1, 2, 3])
def test_engine_equals_peft_evaluation(tiny_base, tiny_loras, mc_file, tmp_path, scoring, group, with_accuracy):
    workspace, requests = requests_for(tiny_base, mc_file, 14, scoring)
    settings = workspace.settings(4)
    other_rank = save_tiny_lora(tiny_base, tmp_path / "r2", seed=7, r=2)  # another layout: scored through PEFT
    paths = [*tiny_loras, other_rank, tiny_loras[0]]
    records = records_for(paths[:-1])
    records.append(records[0])  # the same adapter twice in one call scores the same
    engine = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=group, with_accuracy=with_accuracy)
    got = engine.score(records)
    assert [s.id for s in got] == [r.id for r in records]
    # loss only: a cloze request sends its gold continuation alone, with the same loss and no prediction
    predicts = with_accuracy or scoring == "letter"
    tolerance = _tolerance(settings)
    for scores, path in zip(got, paths):
        losses, preds = _reference(tiny_base, path, requests, settings)
        assert scores.losses == pytest.approx(losses, **tolerance)
        assert scores.correct == ([p == r.answer for p, r in zip(preds, requests)] if predicts else None)
        assert scores.tokens == sum(forward_tokens(r, with_accuracy) for r in requests)
    if not predicts:
        assert scores.tokens < sum(forward_tokens(r) for r in requests)


def test_engine_scores_subsets_and_full_finetunes(tiny_base, tiny_loras, tiny_fulls, mc_file):
    workspace, requests = requests_for(tiny_base, mc_file, 12, "cloze")
    settings = workspace.settings(5)
    engine = ScoringEngine(tiny_base, requests, settings)
    fulls = records_for(tiny_fulls[:2], tiny_base)
    lora = records_for(tiny_loras[:1])
    subset = (11, 0, 5, 7)
    got = engine.score([fulls[0], *lora, fulls[1]], indices=subset)
    assert [s.id for s in got] == [fulls[0].id, lora[0].id, fulls[1].id]
    picked = [requests[i] for i in subset]
    for scores, path, full in zip(got, [tiny_fulls[0], tiny_loras[0], tiny_fulls[1]], [True, False, True]):
        losses, _ = _reference(tiny_base, path, picked, settings, full=full)
        assert scores.indices == subset
        assert scores.losses == pytest.approx(losses, abs=1e-5)
    # the slots' model still holds the base: a later adapter scores as if first
    again = engine.score(lora, indices=subset)[0]
    assert again.losses == pytest.approx(got[1].losses, abs=1e-6)


def test_grouped_forward_matches_one_adapter_at_a_time(tiny_base, tiny_loras, mc_file):
    workspace, requests = requests_for(tiny_base, mc_file, 9, "cloze")
    records = records_for(tiny_loras)
    settings = workspace.settings(3)
    one = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=1).score(records)
    grouped = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=3).score(records)
    for a, b in zip(one, grouped):
        assert a.losses == pytest.approx(b.losses, **_tolerance(settings))


def test_default_grouping_follows_the_examples_each_adapter_brings(tiny_base, tiny_loras, mc_file, monkeypatch):
    """Few examples per adapter (a first halving round) put more adapters in one forward. The slots are
    built once, for the first call; a later call on more examples groups fewer adapters into them."""
    workspace, requests = requests_for(tiny_base, mc_file, 12, "cloze")
    settings = workspace.settings(8)
    assert default_adapters_per_forward(tiny_base, settings, [2]) == GROUP_ROWS // 2
    assert default_adapters_per_forward(tiny_base, settings, [8] * 12 + [4]) == GROUP_ROWS // 8
    assert default_adapters_per_forward(tiny_base, settings) == GROUP_ROWS // 8
    on_gpu = dataclasses.replace(settings, device=torch.device("cuda"))  # only its type is read
    assert default_adapters_per_forward(tiny_base, on_gpu) == CUDA_GROUP_ROWS // 8 > GROUP_ROWS // 8
    # sized by the smallest batch, which stacks a whole group in one forward (the larger ones in several)...
    wide = dataclasses.replace(on_gpu, batch_size=256)
    assert default_adapters_per_forward(tiny_base, wide, [206, 50]) == CUDA_GROUP_ROWS // 50
    # ...but a tail of a few long questions does not make a group of hundreds
    assert default_adapters_per_forward(tiny_base, wide, [125, 3]) == CUDA_GROUP_ROWS // engine_module.MIN_STACK_ROWS
    assert default_adapters_per_forward(tiny_base, wide, [4]) == CUDA_GROUP_ROWS // 4
    with monkeypatch.context() as patch:  # the engine before: a group sized by the questions, every batch at once
        patch.setattr(engine_module, "STACK_EACH_BATCH", False)
        assert default_adapters_per_forward(tiny_base, wide, [206, 50]) == CUDA_GROUP_ROWS // 256
    with monkeypatch.context() as patch:  # as if the base were a real model: fewer rows per forward on a CPU
        patch.setattr(engine_module, "CPU_GROUPING_MAX_PARAMETERS", 0)
        assert default_adapters_per_forward(tiny_base, settings) == CPU_LARGE_MODEL_GROUP_ROWS // 8 < GROUP_ROWS // 8
        assert default_adapters_per_forward(tiny_base, workspace.settings(256)) == 1
        assert default_adapters_per_forward(tiny_base, on_gpu) == CUDA_GROUP_ROWS // 8
    records = records_for(tiny_loras)
    engine = ScoringEngine(tiny_base, requests, settings)
    first = engine.score(records, indices=(0, 1))
    later = engine.score(records)
    tolerance = _tolerance(settings)
    for path, few, every in zip(tiny_loras, first, later):
        assert few.losses == pytest.approx(_reference(tiny_base, path, requests[:2], settings)[0], **tolerance)
        assert every.losses == pytest.approx(_reference(tiny_base, path, requests, settings)[0], **tolerance)


def test_an_adapter_the_slots_cannot_hold_scores_again_in_a_later_call(tiny_base, tiny_loras, mc_file, tmp_path):
    """A later halving round scores survivors again on the same engine, PEFT-loaded ones too."""
    workspace, requests = requests_for(tiny_base, mc_file, 6, "cloze")
    settings = workspace.settings(3)
    other_rank = save_tiny_lora(tiny_base, tmp_path / "r2", seed=7, r=2)
    records = records_for([tiny_loras[0], other_rank])
    engine = ScoringEngine(tiny_base, requests, settings)
    engine.score(records, indices=(0, 1))
    again = engine.score(records)
    assert again[1].losses == pytest.approx(_reference(tiny_base, other_rank, requests, settings)[0], abs=1e-5)


def test_each_batch_stacks_its_own_share_of_a_group(tiny_base, tiny_loras, mc_file, tmp_path, monkeypatch):
    """By default a group is sized by its smallest batch, which scores the whole group in one forward, and
    a larger batch scores it in windows of slots (``ScoringPlan.run``'s ``stack_rows``). Every adapter
    still scores as alone, in windows whose slots share a scale and in windows whose slots do not."""
    from mashup import evaluation, score_batches

    monkeypatch.setattr(engine_module, "GROUP_ROWS", 16)
    monkeypatch.setattr(engine_module, "MIN_STACK_ROWS", 2)
    monkeypatch.setitem(engine_module.FORWARD_FIXED_SHARE, "cpu", 1.0)
    workspace, requests = requests_for(tiny_base, mc_file, 12, "letter")
    settings = workspace.settings(8)
    stacking = engine_module.default_stacking(tiny_base, settings)
    rows = [len(b) for b in score_batches.plan_batch_rows(requests, 8, stacking=stacking)]
    assert len(set(rows)) > 1
    scaled = tmp_path / "scaled"  # the same factors at another lora_alpha: another scale in the same slots
    shutil.copytree(tiny_loras[1], scaled)
    config = json.loads((scaled / "adapter_config.json").read_text())
    (scaled / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 3 * config["lora_alpha"]}))
    paths = [*tiny_loras, scaled] + [save_tiny_lora(tiny_base, tmp_path / f"more{i}", seed=20 + i) for i in range(5)]
    records = records_for(paths)
    records[3].id = "scaled"  # its weights are tiny_loras[1]'s, so is its digest
    forwards = []
    run = evaluation.ScoringPlan.run

    def counted(plan, model, copies=1, **stacking):
        forwards.append(plan.forward_rows(copies, stacking.get("stack_rows")))
        return run(plan, model, copies, **stacking)

    monkeypatch.setattr(evaluation.ScoringPlan, "run", counted)
    got = ScoringEngine(tiny_base, requests, settings).score(records)
    group = default_adapters_per_forward(tiny_base, settings, rows)
    assert group == 16 // min(rows) < len(records)
    assert [len(f) > len(rows) for f in forwards] == [True, False]  # in windows; the last group, of one, not
    assert max(max(f) for f in forwards) <= 16
    for scores, path in zip(got, paths):
        reference = _reference(tiny_base, path, requests, settings)[0]
        assert scores.losses == pytest.approx(reference, **_tolerance(settings))
    assert got[3].losses != pytest.approx(got[1].losses, abs=1e-3)  # the scale matters here
