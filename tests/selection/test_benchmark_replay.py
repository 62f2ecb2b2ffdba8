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


def test_report_keeps_exhaustive_timed_live_beside_the_selectors(tmp_path, capsys):
    """``--selectors exhaustive,halving`` reports live exhaustive seconds against the recorded ones, and the
    summary keeps them beside the merged-init accuracy; the second live runs of ``--compare-read-ahead`` and
    ``--compare-device-keep`` too."""
    import json

    from selection_library import parse_args, report, results_path

    args = parse_args(["--targets", "arc_easy", "--selectors", "exhaustive,halving", "--library-size", "4",
                       "--cache-dir", str(tmp_path)])
    ranking = ["a", "b", "c", "d"]
    stats = {"cost_ratio": 1.0}
    results = {
        "exhaustive": {"ranking": ranking, "seconds": 40.0, "merged_accuracy": 0.5, "estimated_seconds": 40.0,
                       "stats": stats, "live": {"seconds": 44.0, "top_k_as_replayed": True}},
        "halving": {"ranking": ["b", "a", "d", "c"], "estimated_seconds": 4.0, "stats": {"cost_ratio": 0.1},
                    "live": {"seconds": 6.0, "top_k_as_replayed": True, "read_ahead_off_seconds": 8.0,
                             "keep_off_seconds": 7.0},
                    "merged_accuracy": 0.5},
        "random": {"ranking": ["c", "d"], "merged_accuracy": 0.25},
    }
    path = results_path(args, "arc_easy")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))
    rows = report(args)["targets"]
    assert rows["arc_easy"]["halving"]["prefilter_seconds"] == 0.0  # halving runs no prefilter
    summary = report(args)["summary"]
    assert summary["exhaustive"]["live_seconds_cost_ratio"] == pytest.approx(1.1)
    assert summary["exhaustive"]["merged_accuracy"] == 0.5
    assert summary["halving"]["live_seconds_cost_ratio"] == pytest.approx(0.15)
    assert summary["halving"]["live_read_ahead_off_seconds_cost_ratio"] == pytest.approx(0.2)
    assert "live_read_ahead_off_seconds_cost_ratio" not in summary["exhaustive"]
    assert summary["halving"]["live_keep_off_seconds_cost_ratio"] == pytest.approx(0.175)
    assert "live 15.0% seconds (20.0% with read-ahead off) (17.5% with no blocks kept on the device)" \
        in capsys.readouterr().out
    assert summary["halving"]["top2_agreement"] == 1.0 and summary["random"]["merged_accuracy"] == 0.25


def test_report_shows_prefilter_halving_run_as_on_a_new_target_with_cached_prototypes(tmp_path, capsys):
    import json

    from selection_library import parse_args, report, results_path

    args = parse_args(["--targets", "arc_easy", "--selectors", "prefilter+halving", "--library-size", "4",
                       "--cache-dir", str(tmp_path)])
    warm = {"seconds": 2.0, "ranking": ["b", "c", "a", "d"], "prototypes_cached": 4}
    results = {
        "exhaustive": {"ranking": ["a", "b", "c", "d"], "seconds": 40.0, "merged_accuracy": 0.5},
        "prefilter+halving": {"ranking": ["a", "b", "c", "d"], "estimated_seconds": 4.0, "merged_accuracy": 0.5,
                              "stats": {"cost_ratio": 0.05, "prefilter_seconds": 1.0, "probe_seconds": 0.5},
                              "live": {"seconds": 5.0, "top_k_as_replayed": True, "warm_prototypes": warm,
                                       "warm_prototypes_seconds": 2.0}},
        "random": {"ranking": ["c", "d"], "merged_accuracy": 0.25},
    }
    path = results_path(args, "arc_easy")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))
    row = report(args)["targets"]["arc_easy"]["prefilter+halving"]
    assert row["live_warm_prototypes_seconds_cost_ratio"] == pytest.approx(0.05)
    assert row["live_warm_prototypes_top2_agreement"] is False  # its top 2 (b, c) is not exhaustive's (a, b)
    assert row["live_read_ahead_off_seconds_cost_ratio"] is None
    assert "live 12.5% seconds (5.0% as on a new target with Arrow's prototypes cached)" in capsys.readouterr().out


def test_a_selection_as_on_a_new_target_reads_no_candidate_for_the_prefilter(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                              monkeypatch):
    from selection_library import warm_prototype_selection

    from mashup.config import PrefilterConfig
    from mashup.selection import factors
    from mashup.selection.prefilter import run_prefilter

    records = records_for(tiny_loras)
    workspace, requests = requests_for(tiny_base, mc_file, 12, scoring="letter")
    config = SelectConfig(samples=12, k=1, selector="prefilter+halving", batch_size=4, cache=False,
                          prefilter=PrefilterConfig(signals=["arrow"], keep=2, min_keep=1),
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=1))
    cache_dir = tmp_path / "prototype-cache"
    run_prefilter(records, requests, workspace.settings(4), tiny_base, config.prefilter, "benchmark",
                  library_dir=cache_dir)  # what the replay's prefilter leaves behind

    def no_read(*args, **kwargs):
        raise AssertionError("the prefilter read a candidate's factors")

    monkeypatch.setattr(factors.FactorReader, "read", no_read)
    for _ in range(2):  # the second run finds no scores or signal values from the first
        warm = warm_prototype_selection(workspace, records, requests, config, cache_dir)
        assert warm["prototypes_cached"] == 3 and warm["probe_seconds"] > 0 and len(warm["ranking"]) == 2
        assert warm["rounds"][0]["candidates"] == 2  # the prefilter kept 2 of the 3


def test_round_seconds_read_as_questions_candidates_and_seconds():
    from selection_library import round_seconds

    rounds = [{"samples": 8, "candidates": 1000, "seconds": 1.416}, {"samples": 32, "candidates": 250, "seconds": 0.5}]
    assert round_seconds(rounds) == "8q x 1000: 1.42s, 32q x 250: 0.50s"
