"""What a collect and a switcher training record, and how a later run compares it: local paths absolute (the
adapter too), a named model as named, checkpoint id prefixes as the ids they begin; a collect resumes on its
candidates compared as `switch train` compares them."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from mashup.config import TrainConfig, load_config
from mashup.errors import MashupError
from mashup.switch.collect import collect
from mashup.switch.config import (CandidateConfig, CollectConfig, SwitchConfig, candidates_difference,
                                  default_switcher_training, resolved_candidate)
from mashup.switch.rewards import RewardResult
from mashup.switch.tasks import SwitchTask, choice_item, number_item, ordered_task_fingerprint
from mashup.switch.train import train_switcher
from mashup.data.schema import MCExample
from tests.switch.helpers import cut_back, generation

collect_module = importlib.import_module("mashup.switch.collect")
TASK = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)], [])


@pytest.fixture()
def varied_reward(monkeypatch) -> None:
    monkeypatch.setattr(collect_module, "build_reward",
                        lambda *a: lambda item, text: RewardResult(float(len(text) % 7), True))


# --- `switch train` records its adapter and base as the library records a base ---

def test_switch_train_records_its_adapter_and_base_absolute(trio, tiny_base, other_base, tmp_path, monkeypatch,
                                                            varied_reward) -> None:
    monkeypatch.chdir(tmp_path)
    config = SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                      CandidateConfig(model=str(other_base), name="b")],
                          generation=generation(segment_tokens=3, max_new_tokens=12),
                          switcher={"model": os.path.relpath(tiny_base)})
    collect(config, CollectConfig(task="tiny", instances=4, rollouts=1, seed=1), "col", candidates=trio[:2],
            task=TASK)
    train = TrainConfig(**{**default_switcher_training().model_dump(), "max_steps": 1, "batch_size": 2})
    summary = train_switcher(config, ["col"], "sw", train)
    assert summary["out"] == str(tmp_path / "sw") and summary["adapter"] == str(tmp_path / "sw" / "adapter")
    assert Path(summary["base"]).is_absolute() and Path(summary["base"]).resolve() == tiny_base.resolve()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    recorded = load_config(tmp_path / "sw" / "switch_config.yaml", SwitchConfig).switcher
    assert recorded.adapter == str(tmp_path / "sw" / "adapter") and Path(recorded.adapter).is_dir()
    assert Path(recorded.model).is_absolute() and Path(recorded.model).resolve() == tiny_base.resolve()


# --- a candidate's model is recorded as the library records a base, its adapter absolute ---

def test_a_named_model_is_recorded_as_named_beside_a_dir_of_its_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    assert resolved_candidate(CandidateConfig(model="smollm2-135m")).model == "smollm2-135m"
    assert resolved_candidate(CandidateConfig(model="./smollm2-135m")).model == str(tmp_path / "smollm2-135m")
    assert resolved_candidate(CandidateConfig(model="org/model")).model == "org/model"  # a Hub id


def test_a_named_model_and_a_dir_of_its_name_are_other_candidates(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    named, local = CandidateConfig(model="smollm2-135m"), CandidateConfig(model="./smollm2-135m")
    assert "model smollm2-135m recorded, ./smollm2-135m in the config" in str(candidates_difference([named], [local]))
    assert candidates_difference([local], [named]) is not None
    assert candidates_difference([named], [named]) is None
    assert candidates_difference([resolved_candidate(local)], [local]) is None


def test_an_adapter_is_recorded_absolute_even_before_it_exists(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recorded = resolved_candidate(CandidateConfig(model="smollm2-135m", adapter="runs/lora"))
    assert recorded.adapter == str(tmp_path / "runs" / "lora")


# --- checkpoint ids: a unique prefix names the id it begins ---

@pytest.mark.parametrize("given", ["3f2a9c", "3f2a9c1b", "3f2a9c1b7d4e"])
def test_a_checkpoint_id_prefix_is_the_same_checkpoint(given: str) -> None:
    full = [CandidateConfig(checkpoint="3f2a9c1b7d4e")]
    assert candidates_difference(full, [CandidateConfig(checkpoint=given)]) is None
    assert candidates_difference([CandidateConfig(checkpoint=given)], full) is None


@pytest.mark.parametrize("given", ["3f2a", "3f2a9", "3f2a9d", "3f2a9c1b7d4f"])
def test_a_short_or_other_checkpoint_id_is_another_checkpoint(given: str) -> None:
    recorded, mine = [CandidateConfig(checkpoint="3f2a9c1b7d4e")], [CandidateConfig(checkpoint=given)]
    difference = candidates_difference(recorded, mine)
    assert difference == f"candidate 0 (3f2a9c1b7d4e): checkpoint 3f2a9c1b7d4e recorded, {given} in the config"


# --- a collect records its candidates absolute and resumes on them compared by the dirs they name ---

def _project_config() -> SwitchConfig:
    return SwitchConfig(candidates=[CandidateConfig(model="models/a", role="aligned", name="a"),
                                    CandidateConfig(model="models/b", name="b")],
                        generation=generation(segment_tokens=3, max_new_tokens=12))


@pytest.fixture()
def projects(tmp_path) -> Path:
    """Two project dirs, each with its own models/a and models/b."""
    for project in ("p1", "p2"):
        for name in ("a", "b"):
            (tmp_path / project / "models" / name).mkdir(parents=True)
    return tmp_path


def test_a_collect_resumed_elsewhere_on_the_same_relative_paths_is_refused(trio, projects, monkeypatch,
                                                                           varied_reward) -> None:
    out, settings = projects / "col", CollectConfig(task="tiny", instances=3, rollouts=1)
    monkeypatch.chdir(projects / "p1")
    collect(_project_config(), settings, out, candidates=trio[:2], task=TASK)
    recorded = load_config(out / "switch_config.yaml", SwitchConfig).candidates
    assert [c.model for c in recorded] == [str(projects / "p1" / "models" / n) for n in ("a", "b")]
    cut_back(out)
    monkeypatch.chdir(projects / "p2")  # the same spelling, other dirs: other models
    with pytest.raises(MashupError, match=r"a collect of other candidates \(candidate 0 \(a\): model") as error:
        collect(_project_config(), settings, out, candidates=trio[:2], task=TASK)
    assert str(out) in error.value.line()
    assert not (out / "summary.json").exists()


def test_a_collect_resumes_on_another_spelling_of_the_same_dirs(trio, projects, monkeypatch, varied_reward) -> None:
    out, settings = projects / "col", CollectConfig(task="tiny", instances=3, rollouts=1)
    monkeypatch.chdir(projects / "p1")
    collect(_project_config(), settings, out, candidates=trio[:2], task=TASK)
    cut_back(out)
    monkeypatch.chdir(projects)
    absolute = SwitchConfig(candidates=[CandidateConfig(model=str(projects / "p1" / "models" / "a"), role="aligned",
                                                        name="a"),
                                        CandidateConfig(model="p1/models/../models/b", name="b")],
                            generation=generation(segment_tokens=3, max_new_tokens=12))
    assert collect(absolute, settings, out, candidates=trio[:2], task=TASK)["instances"] == 3
    other_generation = absolute.model_copy(update={"generation": generation(segment_tokens=4, max_new_tokens=12)})
    cut_back(out)
    with pytest.raises(MashupError, match="a collect with other settings"):
        collect(other_generation, settings, out, candidates=trio[:2], task=TASK)


# --- the digest of a task's rows in order is pinned: collect dirs of the previous commit hold it ---

def test_the_ordered_task_digest_is_pinned() -> None:
    examples = [MCExample("Which?", ("a", "b c"), 1, "ctx"), MCExample("Q2 é", ("x", "y", "z"), 2)]
    choice = SwitchTask("t", "choice", [choice_item(examples[0])], [choice_item(examples[1])])
    number = SwitchTask("n", "number", [number_item("What is 1 + 1?", "2"), number_item("What is 2 + 2?", "4")],
                        [number_item("What is 3 + 3?", "6")])
    assert ordered_task_fingerprint(choice) == "d6c06ef4dd0482c5003468b017832b3491fbb27a8c9e5aed0a8c07695e5a017a"
    assert ordered_task_fingerprint(number) == "b471de9104078147692c94f77db9d91004028232c6bc03200d1d6d6fd0be9a54"
