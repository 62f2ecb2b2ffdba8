"""Values that are not finite, and a prefilter cache another process holds: ranked last, read back, or
computed without the cache, never a scrambled ranking or a traceback."""

import math
import sqlite3

import pytest
from pydantic import ValidationError

from mashup.config import PrefilterConfig, SelectConfig
from mashup.scoring import CheckpointScore, rank
from mashup.selection import select_checkpoints
from mashup.selection.prefilter import run_prefilter
from mashup.selection.scores import PrefixScore, ScoreStore
from mashup.selection.signal_cache import CACHE_NAME, SignalCache
from tests.selection.helpers import records_for, requests_for


def _score(checkpoint_id: str, loss: float, accuracy: float | None = None) -> CheckpointScore:
    return CheckpointScore(checkpoint_id, None, "lora", loss, accuracy, 8, 0.0)


def test_a_loss_that_is_not_finite_ranks_last():
    scores = [_score("a", math.nan), _score("b", 1.0), _score("c", 0.5), _score("d", math.inf), _score("e", 2.0)]
    assert [s.id for s in rank(scores, "loss")] == ["c", "b", "e", "a", "d"]
    tied = [_score("a", math.nan, 0.5), _score("b", 1.0, 0.5), _score("c", 0.1, 0.25)]
    assert [s.id for s in rank(tied, "accuracy")] == ["b", "c", "a"], "last by accuracy too"


def test_a_nan_score_in_the_cache_reads_back_and_ranks_last(tmp_path, tiny_base, tiny_loras, mc_file):
    """SQLite keeps a NaN as NULL: a cached NaN loss must read back as NaN, not break the lookup."""
    _, requests = requests_for(tiny_base, mc_file, 4, "letter")
    records = records_for(tiny_loras)
    store = ScoreStore(tmp_path / "lib", tiny_base, needs_accuracy=False)
    store.store(requests, [(records[0], PrefixScore(math.nan, None, 4)), (records[1], PrefixScore(2.0, None, 4)),
                           (records[2], PrefixScore(3.0, None, 4))])
    found = store.lookup(requests, records)
    assert math.isnan(found[records[0].id].loss) and found[records[1].id].loss == 0.5
    ranked = rank([found[r.id].checkpoint_score(r) for r in records], "loss")
    assert [s.id for s in ranked] == [records[1].id, records[2].id, records[0].id]


def test_signal_values_that_are_not_finite_read_back_as_missing_or_worst(tmp_path):
    cache = SignalCache(tmp_path)
    cache.put_signals("arrow", "target", {"nan": math.nan, "inf": math.inf, "one": 1.0})
    assert cache.signals("arrow", "target", ["nan", "inf", "one"]) == {"inf": math.inf, "one": 1.0}


def test_a_prefilter_cache_another_process_holds_is_a_warning(tmp_path, tiny_base, tiny_loras, mc_file, caplog,
                                                              monkeypatch):
    """Past the busy timeout the prefilter reads what it can and computes the rest, with one warning."""
    from mashup.library import db

    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    records = records_for(tiny_loras)
    config = PrefilterConfig(signals=["arrow"], keep=1, min_keep=1)
    lib, settings = tmp_path / "lib", workspace.settings(3)
    run_prefilter(records, requests, settings, tiny_base, config, "first target", library_dir=lib)
    fresh = run_prefilter(records, requests, settings, tiny_base, config, "second target")
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(lib / CACHE_NAME, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process writing
        with caplog.at_level("WARNING"):
            held = run_prefilter(records, requests, settings, tiny_base, config, "second target", library_dir=lib)
    finally:
        holder.close()
    assert held.values == fresh.values and held.probe_tokens > 0
    busy = [r for r in caplog.records if r.name != "mashup.selection.prefilter"]  # not the small-pool warning
    assert [r.levelname for r in busy] == ["WARNING"] and "library busy" in caplog.text


def test_a_prefilter_needs_a_signal():
    with pytest.raises(ValidationError, match="signals"):
        PrefilterConfig(signals=[])


def test_a_base_with_nan_weights_is_one_error_not_a_ranking_of_nans(tmp_path, tiny_base, tiny_loras, mc_file):
    """Every loss would be NaN and rank alike: the base is refused when it loads, naming it."""
    from mashup.errors import CheckpointError
    from tests.tiny import copy_with_nan

    base = copy_with_nan(tiny_base, tmp_path / "nan-base")
    workspace, requests = requests_for(base, mc_file, 4)
    with pytest.raises(CheckpointError, match="NaN or inf") as error:
        select_checkpoints(workspace, records_for(tiny_loras[:2]), requests, SelectConfig(samples=4, cache=False),
                           None)
    assert str(base) in error.value.line()
