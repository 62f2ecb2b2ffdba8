"""Collect on tiny models: labels from a hand-made reward, common random numbers, dropping ties, resuming."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from mashup.errors import MashupError
from mashup.switch.collect import best_candidate, collect, collect_instance, labelled_instances
from mashup.switch.config import CandidateConfig, CollectConfig, SwitchConfig
from mashup.switch.generation import Plan
from mashup.switch.rewards import RewardResult
from mashup.switch.tasks import SwitchTask, number_item
from tests.switch.helpers import generation

CONFIG = CollectConfig(task="tiny", instances=4, rollouts=2, seed=1)
collect_module = importlib.import_module("mashup.switch.collect")  # the package exports a function of that name
TASK = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)], [])


def constant(item, text):
    return RewardResult(0.0, False)


def _plan() -> Plan:
    return Plan(generation(do_sample=True, temperature=0.8, segment_tokens=3, max_new_tokens=15), aligned=0)


def test_best_candidate() -> None:
    assert best_candidate([0.1, 0.5, 0.2], aligned=0) == 1
    assert best_candidate([0.5, 0.5, 0.2], aligned=1) == 1  # a tie among the best goes to the aligned one
    assert best_candidate([0.2, 0.5, 0.5], aligned=0) == 1  # else to the first
    assert best_candidate([0.3, 0.3, 0.3], aligned=0) is None


def test_the_label_is_the_candidate_whose_continuations_score_best(trio) -> None:
    item = TASK.train[0]
    tie = collect_instance(trio, _plan(), constant, item, 0, CONFIG)
    assert tie["label"] is None and tie["dropped"] == "all candidates tie"
    cut = tie["cut"]
    assert 1 <= cut <= 3 and len(tie["prefix"]) == cut
    prefix = "".join(s["text"] for s in tie["prefix"])
    wanted = prefix + tie["candidates"][2]["segment"]["text"]

    def likes_candidate_2(item, text):
        return RewardResult(float(text.startswith(wanted)), text.startswith(wanted))

    record = collect_instance(trio, _plan(), likes_candidate_2, item, 0, CONFIG)
    assert [c["segment"] for c in record["candidates"]] == [c["segment"] for c in tie["candidates"]]
    assert [c["mean"] for c in record["candidates"]] == [0.0, 0.0, 1.0]
    assert record["label"] == 2 and record["dropped"] is None
    for c, writer in zip(record["candidates"], range(3)):
        assert c["segment"]["writer"] == writer
        assert len(c["rollouts"]) == 2
    # common random numbers: every candidate's j-th completion has the same seed and switch pattern after it
    for j in range(2):
        seeds = {c["rollouts"][j]["seed"] for c in record["candidates"]}
        patterns = {tuple(c["rollouts"][j]["writers"][cut + 1:]) for c in record["candidates"]}
        assert len(seeds) == 1 and len(patterns) == 1


def _switch_config(tiny_base: Path, other_base: Path) -> SwitchConfig:
    return SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                    CandidateConfig(model=str(other_base), name="b")],
                        generation=generation(segment_tokens=3, max_new_tokens=12))


def test_a_failed_collect_resumes_without_duplicating_rollouts(trio, tiny_base, other_base, tmp_path,
                                                               monkeypatch) -> None:
    config, candidates = _switch_config(tiny_base, other_base), trio[:2]
    monkeypatch.setattr(collect_module, "build_reward", lambda *a: lambda item, text: RewardResult(len(text) % 3, True))
    reference = collect(config, CONFIG, tmp_path / "whole", candidates=candidates, task=TASK)
    real = collect_module.collect_instance
    calls = {"n": 0}

    def crash_on_the_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_module, "collect_instance", crash_on_the_third)
    with pytest.raises(RuntimeError):
        collect(config, CONFIG, tmp_path / "resumed", candidates=candidates, task=TASK)
    out = tmp_path / "resumed"
    assert not (out / "summary.json").exists()  # unfinished: no summary
    with pytest.raises(MashupError, match="unfinished"):
        labelled_instances(out)
    with open(out / "rollouts.jsonl", "a") as handle:
        handle.write('{"index": 2, "torn')  # a line cut off by the crash
    summary = collect(config, CONFIG, out, candidates=candidates, task=TASK)
    lines = (out / "rollouts.jsonl").read_text().splitlines()
    whole = (tmp_path / "whole" / "rollouts.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]
    assert lines == whole  # the same instances, rollouts and rewards as an uninterrupted run
    assert summary["instances"] == reference["instances"] == 4
    assert summary["labels"] == reference["labels"]


def test_resuming_with_other_settings_is_refused(trio, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    config = _switch_config(tiny_base, other_base)
    monkeypatch.setattr(collect_module, "build_reward", lambda *a: constant)
    small = CONFIG.model_copy(update={"instances": 1})
    collect(config, small, tmp_path / "c", candidates=trio[:2], task=TASK)
    with pytest.raises(MashupError, match="other settings"):
        collect(config, small.model_copy(update={"rollouts": 3}), tmp_path / "c", candidates=trio[:2], task=TASK)


def test_too_few_segments_to_switch_is_a_clear_error(trio) -> None:
    plan = Plan(generation(segment_tokens=8, max_new_tokens=16), aligned=0)  # 2 segments, both forced
    with pytest.raises(MashupError, match="no switch to label"):
        collect_instance(trio, plan, constant, TASK.train[0], 0, CONFIG)
