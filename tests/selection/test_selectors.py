import math
import random
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from mashup.config import DataConfig, EvalConfig, HalvingConfig, SelectConfig, TrainConfig
from mashup.errors import MashupError
from mashup.library import Library
from mashup.models import resolve_precision
from mashup.selection import get_selector, halving_schedule
from mashup.selection.example_scores import forward_tokens
from mashup.scoring import CheckpointScore, rank
from mashup.selection.scores import PrefixScore
from mashup.selection.selectors import _mean_and_stdev, close_contenders, near_tie_room, planned_work, token_cap
from mashup.verbs import select, train_model
from tests.conftest import write_mc_jsonl
from tests.selection.helpers import requests_for
from tests.tiny import save_tiny_lora


def _same_score() -> dict:
    """fp32: equal to rounding. bf16: one request scored in batches padded to other lengths rounds apart (seen:
    1.7e-4 on a loss of 6.3, where halving's rounds and exhaustive's pass cut the requests differently)."""
    return {"rel": 5e-3} if resolve_precision(None, torch.device("cpu")) == "bf16" else {"abs": 1e-6}


def test_halving_schedule_keeps_a_fraction_and_ends_on_the_whole_sample():
    config = HalvingConfig(min_samples=16, factor=4, min_survivors=8)
    assert halving_schedule(1000, 256, config, k=2) == [(16, 1000), (64, 250), (256, 63)]
    assert halving_schedule(100, 256, config, k=2) == [(16, 100), (64, 25), (256, 8)]
    assert halving_schedule(8, 256, config, k=2) == [(256, 8)], "few candidates: plain exhaustive"
    assert halving_schedule(40, 256, config, k=12) == [(16, 40), (256, 12)], "never below k"
    assert halving_schedule(1000, 10, config, k=2) == [(10, 1000)]
    assert planned_work([(16, 1000), (64, 250), (256, 63)]) == 1000 * 16 + 250 * 48 + 63 * 192
    # at most as many close contenders again each round, and never more than the round before scored
    assert planned_work([(16, 1000), (64, 250), (256, 63)], contenders=True) == 1000 * 16 + 500 * 48 + 126 * 192
    assert planned_work([(8, 40), (32, 10), (256, 8)], contenders=True) == 40 * 8 + 20 * 24 + 16 * 224
    assert planned_work([(8, 12), (256, 8)], contenders=True) == 12 * 8 + 12 * 248


def test_unknown_selector_lists_the_valid_ones():
    with pytest.raises(MashupError, match="exhaustive, halving, prefilter\\+halving"):
        get_selector("greedy")


@pytest.fixture(scope="module")
def graded_loras(tmp_path_factory, tiny_base):
    """Three adapters trained on the target (30, 60, 90 steps) and 13 strong random ones: a clear top 3."""
    root = tmp_path_factory.mktemp("graded")
    target = write_mc_jsonl(root / "target.jsonl", 40)
    data = DataConfig(data=str(target), scoring="cloze")
    paths = []
    for i, steps in enumerate((30, 60, 90)):
        config = TrainConfig(lr=3e-2, max_steps=steps, batch_size=8, seed=i, lora_r=4, lora_alpha=8,
                             target_modules=["q_proj", "v_proj", "up_proj"])
        paths.append(Path(train_model(str(tiny_base), data, config, root / f"trained{i}",
                                      eval_config=EvalConfig(max_examples=0)).weights_dir))
    for i in range(13):
        path = save_tiny_lora(tiny_base, root / f"random{i}", seed=100 + i)
        weights = path / "adapter_model.safetensors"
        save_file({k: v * 6 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
        paths.append(path)
    return paths


def _select(tmp_path, mc_file, tiny_base, selector, samples=24, keep_within_se=2.0, max_share="auto"):
    config = SelectConfig(samples=samples, k=2, selector=selector, batch_size=8, cache=False,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=2, keep_within_se=keep_within_se,
                                                max_share=max_share))
    return select(str(tiny_base), DataConfig(data=str(mc_file), scoring="cloze"), config, tmp_path / "lib")


@pytest.mark.fp32  # prefix sums against whole-sample scores at 1e-6
def test_halving_keeps_the_true_top_k_for_less(tmp_path, tiny_base, graded_loras, mc_file):
    Library(tmp_path / "lib").add(graded_loras)
    full = _select(tmp_path, mc_file, tiny_base, "exhaustive")
    halved = _select(tmp_path, mc_file, tiny_base, "halving")
    assert set(halved.selected) == set(full.selected)
    assert halved.selected == full.selected
    exhaustive_loss = {s.id: s.loss for s in full.ranking}
    for score in halved.ranking[:2]:
        assert score.n == 24 and score.loss == pytest.approx(exhaustive_loss[score.id], **_same_score())
    assert [s.n for s in halved.ranking] == sorted((s.n for s in halved.ranking), reverse=True)
    assert {s.id for s in halved.ranking} == {s.id for s in full.ranking}
    assert halved.stats["forward_tokens"] < 0.6 * full.stats["forward_tokens"]
    assert full.stats["cost_ratio"] == pytest.approx(1.0)
    assert [r["samples"] for r in halved.stats["rounds"]] == [4, 8, 16, 24]


def test_prefilter_then_halving_keeps_the_true_top_k(tmp_path, tiny_base, graded_loras, mc_file):
    Library(tmp_path / "lib").add(graded_loras)
    full = _select(tmp_path, mc_file, tiny_base, "exhaustive")
    config = SelectConfig(samples=24, k=2, selector="prefilter+halving", batch_size=8,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=2),
                          prefilter={"keep": 6, "min_keep": 1})
    picked = select(str(tiny_base), DataConfig(data=str(mc_file), scoring="cloze"), config, tmp_path / "lib")
    assert picked.selected == full.selected
    assert picked.stats["prefiltered_out"] == 10 and len(picked.ranking) == 6
    assert picked.stats["probe_tokens"] > 0
    assert 0 < picked.stats["probe_seconds"] < picked.stats["prefilter_seconds"]  # the rest: the signals


@pytest.mark.parametrize("selector", ["exhaustive", "halving", "prefilter+halving"])
def test_a_repeated_select_costs_nothing(tmp_path, tiny_base, tiny_loras, mc_file, selector):
    extra = [save_tiny_lora(tiny_base, tmp_path / f"x{i}", seed=50 + i) for i in range(6)]
    Library(tmp_path / "lib").add([*tiny_loras, *extra])
    config = SelectConfig(samples=16, k=2, selector=selector, batch_size=8,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=2),
                          prefilter={"keep": 5, "min_keep": 1})
    data = DataConfig(data=str(mc_file), scoring="letter")
    first = select(str(tiny_base), data, config, tmp_path / "lib")
    again = select(str(tiny_base), data, config, tmp_path / "lib")
    assert first.stats["forward_tokens"] > 0
    assert again.stats["forward_tokens"] == 0 and again.stats["probe_tokens"] == 0 and again.stats["scored"] == 0
    assert [(s.id, s.n) for s in again.ranking] == [(s.id, s.n) for s in first.ranking]
    assert all(s.cached for s in again.ranking)
    assert [s.loss for s in again.ranking] == pytest.approx([s.loss for s in first.ranking], abs=1e-9)


def test_halving_scores_only_the_requests_new_to_each_survivor(tmp_path, tiny_base, tiny_loras, mc_file):
    Library(tmp_path / "lib").add(tiny_loras)
    result = _select(tmp_path, mc_file, tiny_base, "halving", samples=16, keep_within_se=0)
    assert [(r["samples"], r["candidates"]) for r in result.stats["rounds"]] == [(4, 3), (16, 2)]
    _, requests = requests_for(tiny_base, mc_file, 16, "cloze")
    tokens = [forward_tokens(r, with_accuracy=False) for r in requests]  # a loss ranking scores gold answers only
    assert result.stats["forward_tokens"] == 3 * sum(tokens[:4]) + 2 * sum(tokens[4:])
    assert result.stats["exhaustive_tokens"] == 3 * sum(tokens)
    assert math.isclose(result.stats["cost_ratio"], result.stats["forward_tokens"] / result.stats["exhaustive_tokens"])


def test_halving_over_full_finetunes_matches_exhaustive_scores(tmp_path, tiny_base, tiny_fulls, mc_file):
    Library(tmp_path / "lib").add(tiny_fulls, base=str(tiny_base))
    data = DataConfig(data=str(mc_file), scoring="letter")
    config = {"samples": 12, "k": 1, "batch_size": 4, "cache": False,
              "halving": HalvingConfig(min_samples=3, factor=3, min_survivors=1, keep_within_se=0)}
    full = select(str(tiny_base), data, SelectConfig(**config), tmp_path / "lib", kind="full")
    halved = select(str(tiny_base), data, SelectConfig(selector="halving", **config), tmp_path / "lib", kind="full")
    winner = halved.ranking[0]
    exhaustive_loss = {s.id: s.loss for s in full.ranking}
    assert winner.n == 12 and winner.loss == pytest.approx(exhaustive_loss[winner.id], **_same_score())
    assert [(r["samples"], r["candidates"]) for r in halved.stats["rounds"]] == [(3, 3), (12, 1)]


def test_a_halving_selection_reads_the_bases_headers_once_for_its_unit_sizes(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                              monkeypatch):
    """On a CPU a unit's size hangs on the base's parameter count (its safetensors headers): read once for the
    driver's unit sizes and once for the engine's groups, not again in every halving round."""
    from mashup.selection import engine

    reads = []
    monkeypatch.setattr(engine, "count_parameters", lambda base_dir: reads.append(base_dir) or 10_000)
    extra = [save_tiny_lora(tiny_base, tmp_path / f"x{i}", seed=50 + i) for i in range(5)]
    Library(tmp_path / "lib").add([*tiny_loras, *extra])
    result = _select(tmp_path, mc_file, tiny_base, "halving", samples=16, keep_within_se=0)
    assert len(result.stats["rounds"]) == 3 and len(reads) == 2


def test_halving_races_near_ties_on_instead_of_cutting_them(tmp_path, tiny_base, tiny_loras, mc_file):
    """Three random adapters of a tiny model are near-identical: no gap is significant, so all reach 16."""
    Library(tmp_path / "lib").add(tiny_loras)
    result = _select(tmp_path, mc_file, tiny_base, "halving", samples=16)
    assert [(r["samples"], r["candidates"]) for r in result.stats["rounds"]] == [(4, 3), (16, 3)]
    assert [s.n for s in result.ranking] == [16, 16, 16]
    assert result.stats["forward_tokens"] == result.stats["exhaustive_tokens"]


def test_a_cost_cap_keeps_only_the_near_ties_it_has_room_for(tmp_path, tiny_base, tiny_loras, mc_file):
    """The near-ties above cost the whole sample. A cap that fits them changes nothing; one below that
    keeps only the schedule's 2 survivors; one below the schedule's own share does not cut the schedule."""
    Library(tmp_path / "lib").add(tiny_loras)
    _, requests = requests_for(tiny_base, mc_file, 16, "cloze")
    tokens = [forward_tokens(r, with_accuracy=False) for r in requests]
    schedule = (3 * sum(tokens[:4]) + 2 * sum(tokens[4:])) / (3 * sum(tokens))
    for cap, last_round in [(1.0, (16, 3)), ((1.0 + schedule) / 2, (16, 2)), (schedule / 2, (16, 2))]:
        result = _select(tmp_path, mc_file, tiny_base, "halving", samples=16, max_share=cap)
        assert [(r["samples"], r["candidates"]) for r in result.stats["rounds"]] == [(4, 3), last_round]
        assert result.stats["cost_ratio"] == pytest.approx(1.0 if last_round[1] == 3 else schedule)
        assert result.stats["token_cap"] == cap
    # the default (auto) sets no cap on a pool this small: the near-ties race on as without one
    assert _select(tmp_path, mc_file, tiny_base, "halving", samples=16).stats["token_cap"] is None


def _cap_context(max_share, candidates: int, probe_tokens: int = 0) -> SimpleNamespace:
    """What ``token_cap`` reads of a selection: its setting, and the tokens of exhaustive scoring and of a probe."""
    return SimpleNamespace(config=SimpleNamespace(halving=HalvingConfig(max_share=max_share)),
                           stats=SimpleNamespace(exhaustive_tokens=candidates * 256, probe_tokens=probe_tokens))


def test_the_automatic_cap_is_ten_percent_where_the_schedule_fits_under_it():
    prefix = list(range(257))  # one token per request
    large = [(8, 1000), (32, 250), (128, 63), (256, 16)]  # the schedule alone: 22,096 of 256,000 tokens (8.6%)
    assert token_cap(_cap_context("auto", 1000), large, prefix) == 0.1
    # near-ties must keep a tenth of the schedule's tokens under the cap: 24,306 with the probe at most 1,294
    assert token_cap(_cap_context("auto", 1000, probe_tokens=1_294), large, prefix) == 0.1
    assert token_cap(_cap_context("auto", 1000, probe_tokens=1_295), large, prefix) is None
    small = [(8, 40), (32, 10), (256, 8)]  # 2,352 of 10,240 (23%): a cap would only turn the near-tie rule off
    assert token_cap(_cap_context("auto", 40), small, prefix) is None
    mid = [(8, 300), (32, 75), (128, 19), (256, 8)]  # 7,048 of 76,800 (9.2%): a cap would leave near-ties 0.8%
    assert token_cap(_cap_context("auto", 300), mid, prefix) is None
    assert token_cap(_cap_context(0.1, 40), small, prefix) == 0.1  # a given cap holds
    assert token_cap(_cap_context(None, 1000), large, prefix) is None
    assert HalvingConfig().max_share == "auto"


def test_near_tie_room_leaves_the_schedules_later_rounds_their_tokens():
    rounds = [(8, 1000), (32, 250), (128, 63), (256, 16)]
    prefix = list(range(257))  # one token per request
    later = 250 * 24 + 63 * 96 + 16 * 128
    assert near_tie_room(rounds, prefix, 0, later) == 0
    assert near_tie_room(rounds, prefix, 0, later + 24 * 10 + 23) == 10
    assert near_tie_room(rounds, prefix, 0, later - 1) == 0  # over already: no near-ties, the schedule stands
    assert near_tie_room(rounds, prefix, 2, 16 * 128 + 128 * 3) == 3


def _prefix(losses):
    return PrefixScore(sum(losses), 0, len(losses), losses=tuple(losses))


def _ranking(scores):
    return rank([CheckpointScore(i, None, "lora", s.loss, 0.0, s.n, 0.0) for i, s in scores.items()], "loss")


def test_close_contenders_are_the_ones_a_paired_test_cannot_tell_from_the_kth_best():
    noise = [0.3, -0.3, 0.25, -0.2, 0.1, -0.15, 0.2, -0.1]
    best = [1.0 + 0.1 * i for i in range(8)]
    scores = {"a": _prefix([x - 0.5 for x in best]), "b": _prefix(best),
              "steady": _prefix([x + 0.05 for x in best]),  # small but consistent gap: significant
              "noisy": _prefix([x + 0.05 + e for x, e in zip(best, noise)]),  # same mean gap, noisy: not significant
              "far": _prefix([x + 2.0 + e for x, e in zip(best, noise)]),
              "unknown": PrefixScore(sum(best) + 0.01, 0, 8)}  # an old cache row: no per-example losses
    ranked = _ranking(scores)
    assert [s.id for s in ranked] == ["a", "b", "unknown", "steady", "noisy", "far"]
    assert [s.id for s in close_contenders(ranked, scores, keep=2, k=2, within_se=2.0)] == ["noisy"]
    assert close_contenders(ranked, scores, keep=2, k=2, within_se=0.0) == []
    # a constant gap has no noise: significant at any width; a wide enough one keeps the far noisy one
    assert [s.id for s in close_contenders(ranked, scores, keep=2, k=2, within_se=100.0)] == ["noisy", "far"]
    assert [s.id for s in close_contenders(ranked, scores, keep=1, k=1, within_se=100.0)] == ["noisy"], "at most keep"


def test_the_paired_tests_mean_and_stdev_are_the_statistics_modules():
    generator = random.Random(0)
    for n in (2, 3, 8, 256):
        values = [generator.gauss(0, 1) * 10 ** generator.randint(-6, 2) for _ in range(n)]
        mean, stdev = _mean_and_stdev(values)
        assert mean == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert stdev == pytest.approx(statistics.stdev(values), rel=1e-12)
