"""max_new_tokens is a cap; a switcher adapter and a resumed collect are refused when they were made for other
candidates or other task data (roles: test_recorded_runs.py)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from mashup.config import TrainConfig, save_config
from mashup.errors import CheckpointError, MashupError
from mashup.switch.collect import collect
from mashup.switch.config import (CandidateConfig, CollectConfig, SwitchConfig, SwitchEvalConfig,
                                  default_switcher_training)
from mashup.switch.evaluate import evaluate_switch
from mashup.switch.generation import Plan, logit_average_generate, random_chooser, switch_generate
from mashup.switch.rewards import RewardResult
from mashup.switch.switcher import load_switcher
from mashup.switch.tasks import SwitchTask, number_item
from mashup.switch.train import train_switcher
from tests.conftest import write_mc_jsonl
from tests.switch.helpers import cut_back, generation, two_candidates
from tests.test_cli import run_cli

collect_module = importlib.import_module("mashup.switch.collect")
QUERY = "Which is a colour?"


# --- max_new_tokens caps the response: the last segment gets only what is left ---

def test_the_last_segment_gets_only_the_tokens_left_under_the_cap(trio) -> None:
    plan = Plan(generation(segment_tokens=4, max_new_tokens=10), 0)
    trace = switch_generate(trio, QUERY, random_chooser(3, 2), plan, seed=1)
    assert not trace.ended and [s.tokens for s in trace.segments] == [4, 4, 2]
    assert plan.config.n_segments == 3


def test_logit_averaging_stops_at_the_cap(trio) -> None:
    aligned = trio[0]
    plan = Plan(generation(segment_tokens=4, max_new_tokens=10, aligned_ends=False), None)
    averaged = logit_average_generate([aligned, aligned], QUERY, plan)
    assert averaged.segments[0].tokens == 10 and not averaged.ended


def test_the_cli_response_is_no_longer_than_max_new_tokens(tmp_path, tiny_base, capsys, monkeypatch) -> None:
    path = tmp_path / "switch.yaml"
    path.write_text(yaml.safe_dump({"candidates": [{"model": str(tiny_base), "role": "aligned", "name": "a"},
                                                   {"model": str(tiny_base), "name": "b"}]}))
    out, _ = run_cli(["switch", "generate", "--config", path, "--writer", "a", "--segment-tokens", 4,
                      "--max-new-tokens", 10, "--json", QUERY], capsys, monkeypatch)
    assert [s["tokens"] for s in json.loads(out)["segments"]] == [4, 4, 2]


# --- a trained switcher names the candidates it was trained with, in their order ---

def _candidates(tiny_base: Path, other_base: Path, expert_lora: Path) -> list[CandidateConfig]:
    return [CandidateConfig(model=str(tiny_base), role="aligned", name="aligned"),
            CandidateConfig(model=str(other_base), name="other"),
            CandidateConfig(model=str(tiny_base), adapter=str(expert_lora), name="expert")]


@pytest.fixture()
def switcher_dir(tmp_path, tiny_base, other_base, expert_lora) -> Path:
    """A `switch train` output dir as trained for [aligned, other, expert] (its adapter: a LoRA on tiny_base)."""
    out = tmp_path / "switcher"
    shutil.copytree(expert_lora, out / "adapter")
    save_config(SwitchConfig(candidates=_candidates(tiny_base, other_base, expert_lora)), out / "switch_config.yaml")
    return out


@pytest.mark.parametrize("order", [[0, 2], [0, 2, 1]])
def test_a_switcher_trained_for_other_candidates_is_refused(switcher_dir, tiny_base, other_base, expert_lora,
                                                            order: list[int]) -> None:
    candidates = [_candidates(tiny_base, other_base, expert_lora)[i] for i in order]
    with pytest.raises(CheckpointError, match=r"trained for other candidates than the config's \(candidate 1 "
                                              r"\(other\): model ") as error:
        load_switcher(tiny_base, len(candidates), adapter=switcher_dir / "adapter", candidates=candidates)
    assert str(switcher_dir / "switch_config.yaml") in error.value.line()


def test_a_switcher_for_the_same_candidates_or_of_unknown_origin_loads(switcher_dir, tiny_base, other_base,
                                                                       expert_lora) -> None:
    candidates = _candidates(tiny_base, other_base, expert_lora)
    assert load_switcher(tiny_base, 3, adapter=switcher_dir / "adapter", candidates=candidates).n == 3
    (switcher_dir / "switch_config.yaml").unlink()  # trained elsewhere: nothing to check against
    assert load_switcher(tiny_base, 2, adapter=switcher_dir / "adapter", candidates=candidates[:2]).n == 2


def test_generate_and_eval_refuse_a_switcher_of_other_candidates(switcher_dir, tmp_path, tiny_base, other_base,
                                                                 expert_lora, capsys, monkeypatch) -> None:
    candidates = _candidates(tiny_base, other_base, expert_lora)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"candidates": [c.model_dump(exclude_none=True) for c in candidates[::2]]}))
    _, err = run_cli(["switch", "generate", "--config", path, "--adapter", switcher_dir / "adapter", "hi"], capsys,
                     monkeypatch, expect=1)
    assert "trained for other candidates" in err and err.strip().count("\n") == 0
    config = SwitchConfig(candidates=candidates[::-1], switcher={"adapter": str(switcher_dir / "adapter")})
    task = SwitchTask("tiny", "number", [], [number_item("What is 1 + 1?", "2")])
    with pytest.raises(CheckpointError, match="trained for other candidates"):
        evaluate_switch(config, SwitchEvalConfig(task="tiny", systems=["switcher-trained"]), task=task)


# --- a collect resumes only on the task data it was started on ---

def test_resuming_on_other_task_data_is_refused(trio, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(collect_module, "build_reward", lambda *a: lambda item, text: RewardResult(1.0, True))
    config, out = two_candidates(tiny_base, other_base), tmp_path / "col"
    settings = CollectConfig(task="tiny", instances=3, rollouts=1)
    task = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)], [])
    collect(config, settings, out, candidates=trio[:2], task=task)
    first = cut_back(out)
    other = SwitchTask("tiny", "number", [number_item(f"What is {i} + 2?", str(i + 2)) for i in range(6)], [])
    with pytest.raises(MashupError, match="other data") as error:
        collect(config, settings, out, candidates=trio[:2], task=other)
    assert str(out) in error.value.line() and "new --out" in error.value.line()
    assert (out / "rollouts.jsonl").read_text() == first and not (out / "summary.json").exists()
    assert collect(config, settings, out, candidates=trio[:2], task=task)["instances"] == 3  # same data: resumes


def test_a_task_file_edited_in_place_is_refused_on_resume(trio, tiny_base, other_base, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(collect_module, "build_reward", lambda *a: lambda item, text: RewardResult(1.0, True))
    config, out = two_candidates(tiny_base, other_base), tmp_path / "col"
    data = write_mc_jsonl(tmp_path / "quiz.jsonl", 12)
    settings = CollectConfig(task=str(data), instances=2, rollouts=1)
    collect(config, settings, out, candidates=trio[:2])
    cut_back(out)
    write_mc_jsonl(data, 12, seed=7)
    with pytest.raises(MashupError, match="other data"):
        collect(config, settings, out, candidates=trio[:2])


def test_a_collect_without_a_recorded_fingerprint_resumes_as_before(trio, tiny_base, other_base, tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(collect_module, "build_reward", lambda *a: lambda item, text: RewardResult(1.0, True))
    config, out = two_candidates(tiny_base, other_base), tmp_path / "col"
    settings = CollectConfig(task="tiny", instances=2, rollouts=1)
    task = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)], [])
    collect(config, settings, out, candidates=trio[:2], task=task)
    cut_back(out)
    (out / collect_module.TASK_DATA).unlink()  # a collect made before the fingerprint was recorded
    assert collect(config, settings, out, candidates=trio[:2], task=task)["instances"] == 2


def test_a_switcher_trained_with_relative_paths_loads_from_another_dir(trio, tiny_base, other_base, tmp_path,
                                                                        monkeypatch) -> None:
    """`switch train` records its candidates resolved, so the check does not depend on the working dir."""
    monkeypatch.setattr(collect_module, "build_reward",
                        lambda *a: lambda item, text: RewardResult(float(len(text) % 7), True))
    monkeypatch.chdir(tmp_path)
    config = SwitchConfig(candidates=[CandidateConfig(model=os.path.relpath(tiny_base), role="aligned", name="a"),
                                      CandidateConfig(model=os.path.relpath(other_base), name="b")],
                          generation=generation(segment_tokens=3, max_new_tokens=12),
                          switcher={"model": str(tiny_base)})
    task = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)], [])
    collect(config, CollectConfig(task="tiny", instances=4, rollouts=1, seed=1), "col", candidates=trio[:2],
            task=task)
    train = TrainConfig(**{**default_switcher_training().model_dump(), "max_steps": 1, "batch_size": 2})
    train_switcher(config, ["col"], "sw", train)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    absolute = [CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                CandidateConfig(model=str(other_base), name="b")]
    assert load_switcher(tiny_base, 2, adapter=tmp_path / "sw" / "adapter", candidates=absolute).n == 2
    with pytest.raises(CheckpointError, match="trained for other candidates"):
        load_switcher(tiny_base, 2, adapter=tmp_path / "sw" / "adapter", candidates=absolute[::-1])
