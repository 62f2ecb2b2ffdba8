"""The library-scale benchmark replays selectors on recorded per-example scores: it must rank like a live run."""

import sys
from pathlib import Path

import pytest

from mashup.config import HalvingConfig, SelectConfig
from mashup.selection import select_checkpoints
from tests.selection.helpers import records_for, requests_for
from tests.tiny import save_tiny_lora

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from selection_replay import RecordingExecutor, ReplayExecutor  # noqa: E402


@pytest.mark.fp32  # live and replayed losses are compared exactly
def test_replayed_halving_ranks_and_counts_tokens_like_a_live_run(tmp_path, tiny_base, mc_file):
    records = records_for([save_tiny_lora(tiny_base, tmp_path / f"a{i}", seed=i) for i in range(10)])
    workspace, requests = requests_for(tiny_base, mc_file, 24, scoring="cloze")
    config = SelectConfig(samples=24, k=2, selector="halving", batch_size=8, cache=False,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=2))

    recorded: dict = {}
    select_checkpoints(workspace, records, requests, config.model_copy(update={"selector": "exhaustive"}), None,
                       executor=RecordingExecutor(len(requests), recorded.__setitem__))
    assert sorted(recorded) == sorted(r.id for r in records)
    replayer = ReplayExecutor(recorded)
    replayed = select_checkpoints(workspace, records, requests, config, None, executor=replayer)
    live = select_checkpoints(workspace, records, requests, config, None)

    assert [s.id for s in replayed.ranking] == [s.id for s in live.ranking]
    assert [s.n for s in replayed.ranking] == [s.n for s in live.ranking]
    assert [s.loss for s in replayed.ranking] == pytest.approx([s.loss for s in live.ranking], abs=1e-5)
    assert replayed.stats.forward_tokens == live.stats.forward_tokens < live.stats.exhaustive_tokens
    whole = sum(v["seconds"] for v in recorded.values())
    assert 0 < replayer.replayed_seconds < whole
