"""The live A/B benchmark's pieces that run anywhere: the engine settings a variant names, restored after
it, and the timed scoring runs it wraps around ``ScoringPlan.run``."""

import gc
from pathlib import Path

import pytest
import torch

from mashup import evaluation
from mashup.selection import engine, read_ahead, slots


@pytest.fixture
def live_ab(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import selection_live_ab  # benchmarks/selection_live_ab.py

    return selection_live_ab


def test_each_variant_sets_its_engine_setting_and_restores_it(live_ab):
    threads, rows, keep = read_ahead.READ_THREADS, engine.CUDA_GROUP_ROWS, read_ahead.DEVICE_KEEP_SHARE
    budget = read_ahead.READ_AHEAD_BYTES
    with live_ab.variant("threads7"):
        assert read_ahead.READ_THREADS == 7
    with live_ab.variant("budget0.5"):
        assert read_ahead.READ_AHEAD_BYTES == 1 << 29
    with live_ab.variant("rows333"):
        assert engine.CUDA_GROUP_ROWS == 333
    with live_ab.variant("keepoff"):
        assert read_ahead.DEVICE_KEEP_SHARE == 0.0
    with live_ab.variant("wholegroups"):
        assert engine.STACK_EACH_BATCH is False
    assert engine.STACK_EACH_BATCH is True
    with live_ab.variant("gcoff"):
        assert not gc.isenabled()
    read = read_ahead.AdapterReadAhead._read
    with live_ab.variant("mmapreads"):
        assert read_ahead.AdapterReadAhead._read is live_ab.mapped_read
    assert read_ahead.AdapterReadAhead._read is read
    assert gc.isenabled()
    assert (read_ahead.READ_THREADS, engine.CUDA_GROUP_ROWS, read_ahead.DEVICE_KEEP_SHARE) == (threads, rows, keep)
    assert read_ahead.READ_AHEAD_BYTES == budget
    with pytest.raises(SystemExit, match="unknown variant"), live_ab.variant("fast"):
        pass


def test_the_schedule_alternates_variants(live_ab):
    assert live_ab.schedule(["default", "copies", "threads8"], 2, 1) == [
        ("default", "halving", 0), ("default", "exhaustive", 0), ("copies", "halving", 0),
        ("copies", "exhaustive", 0), ("threads8", "halving", 0),
        ("default", "halving", 1), ("copies", "halving", 1), ("threads8", "halving", 1)]
    assert live_ab.schedule(["default"], 1, 0) == [("default", "halving", 0)]


def test_timed_forwards_record_every_scoring_run_and_restore_the_plan(live_ab, tiny_base, tiny_loras, mc_file):
    from mashup.config import DataConfig
    from mashup.data.schema import sample
    from mashup.data.target import load_target
    from mashup.library import inspect_checkpoint
    from mashup.selection.engine import ScoringEngine
    from mashup.workspace import open_workspace

    workspace = open_workspace(str(tiny_base), DataConfig(data=str(mc_file)))
    target = load_target(DataConfig(data=str(mc_file)))
    requests = workspace.encode(sample(target.train, 8, 0), target.template)
    records = [inspect_checkpoint(path) for path in tiny_loras[:2]]
    run = evaluation.ScoringPlan.run
    with live_ab.timed_forwards(torch.device("cpu")) as forwards:
        scores = ScoringEngine(tiny_base, requests, workspace.settings(4), adapters_per_forward=2,
                               with_accuracy=False).score(records)
    assert evaluation.ScoringPlan.run is run
    assert len(scores) == 2 and len(forwards) == 1  # both adapters in one scoring run
    assert forwards[0]["copies"] == 2 and sum(forwards[0]["rows"]) == 2 * len(requests)
    assert forwards[0]["seconds"] > 0
    with live_ab.timed_forwards(torch.device("cpu")) as stacked:  # the default: each batch stacked, in windows
        ScoringEngine(tiny_base, requests, workspace.settings(4), with_accuracy=False).score(records)
    assert sum(sum(f["rows"]) for f in stacked) == 2 * len(requests)


def test_the_peft_check_finds_the_engine_equal_to_peft_and_a_wrong_slot(live_ab, tiny_base, tiny_loras, mc_file,
                                                                         monkeypatch):
    from mashup.config import DataConfig
    from mashup.data.schema import sample
    from mashup.data.target import load_target
    from mashup.library import inspect_checkpoint
    from mashup.workspace import open_workspace

    workspace = open_workspace(str(tiny_base), DataConfig(data=str(mc_file)))
    target = load_target(DataConfig(data=str(mc_file)))
    requests = workspace.encode(sample(target.train, 8, 0), target.template)
    pool = [inspect_checkpoint(path) for path in tiny_loras]
    for i, record in enumerate(pool):
        record.id = f"lora{i}"  # as a library names them
    # 2 adapters a forward: the third adapter goes into a slot the first group used
    # fp32 first, then the workspace's precision where that is bf16 (MASHUP_PRECISION=bf16)
    row, *bf16 = live_ab.check_against_peft(workspace, pool, requests, adapters=3, per_forward=2)
    assert [r["precision"] for r in bf16] == (["bf16"] if workspace.bf16 else [])
    assert all(r["same_order"] for r in bf16)
    assert row["precision"] == "fp32" and row["adapters"] == 3 and row["questions"] == 8
    assert row["max_gap"] < 1e-4 and row["same_order"] and row["mean_spread"] > 100 * row["max_gap"]
    load = slots.LoRASlots.load_adapter  # a fault: every adapter of a group lands in its first slot
    monkeypatch.setattr(slots.LoRASlots, "load_adapter", lambda self, slot, *a, **k: load(self, 0, *a, **k))
    wrong, *_ = live_ab.check_against_peft(workspace, pool, requests, adapters=3, per_forward=2)
    assert wrong["max_gap"] > 10 * row["max_gap"]


def test_mapped_reads_score_as_the_engine_does(live_ab, tiny_base, tiny_loras, mc_file):
    """``mmapreads`` changes how the read-ahead reads files, not what comes out."""
    from mashup.config import DataConfig
    from mashup.data.schema import sample
    from mashup.data.target import load_target
    from mashup.library import inspect_checkpoint
    from mashup.selection.engine import ScoringEngine
    from mashup.workspace import open_workspace

    workspace = open_workspace(str(tiny_base), DataConfig(data=str(mc_file)))
    target = load_target(DataConfig(data=str(mc_file)))
    requests = workspace.encode(sample(target.train, 8, 0), target.template)
    records = [inspect_checkpoint(path) for path in tiny_loras]
    for i, record in enumerate(records):
        record.id = f"lora{i}"
    losses = {}
    for name in ("default", "mmapreads"):
        with live_ab.variant(name):
            engine = ScoringEngine(tiny_base, requests, workspace.settings(4), adapters_per_forward=2,
                                   with_accuracy=False, read_ahead=True)
            losses[name] = [s.losses for s in engine.score(records)]
    assert losses["default"] == losses["mmapreads"]


def test_the_copies_variant_finds_every_candidates_copy_made(live_ab, tiny_base, tiny_loras, tmp_path):
    from mashup.library import inspect_checkpoint
    from mashup.selection.scoring_copies import SCORING_COPIES_DIR, ScoringCopies

    pool = [inspect_checkpoint(path) for path in tiny_loras]
    assert live_ab.make_all_copies(tmp_path, pool) > 0
    copies = ScoringCopies(tmp_path / SCORING_COPIES_DIR)
    assert all(copies.path_for(Path(record.path)).exists() for record in pool)
