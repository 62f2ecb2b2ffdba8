"""Dirs a collect or a switcher training recorded are checked by what matters: a resumed collect by its task
rows in order, recorded candidates by weights and alignment (relative paths of older dirs as far as they can be
compared); a role is a free label unless it reads as a misspelt 'aligned'; `switch --json` is strict JSON."""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mashup.config import load_config, save_config
from mashup.errors import CheckpointError, MashupError
from mashup.switch.collect import collect
from mashup.switch.config import CandidateConfig, CollectConfig, SwitchConfig
from mashup.switch.rewards import RewardResult
from mashup.switch.switcher import require_adapter_candidates
from mashup.switch.tasks import SwitchTask, load_switch_task, number_item
from mashup.switch.train import checked_collect_dirs
from tests.switch.helpers import cut_back, two_candidates
from tests.test_cli import run_cli

collect_module = importlib.import_module("mashup.switch.collect")
TASK = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(8)], [])


@pytest.fixture()
def constant_reward(monkeypatch) -> None:
    monkeypatch.setattr(collect_module, "build_reward", lambda *a: lambda item, text: RewardResult(1.0, True))


# --- a resumed collect: the same rows in the same order ---

def test_resuming_on_the_same_rows_in_another_order_is_refused(trio, tiny_base, other_base, tmp_path,
                                                               constant_reward) -> None:
    config, out, settings = two_candidates(tiny_base, other_base), tmp_path / "col", CollectConfig(
        task="tiny", instances=3, rollouts=1)
    collect(config, settings, out, candidates=trio[:2], task=TASK)
    cut_back(out)
    reordered = SwitchTask("tiny", "number", TASK.train[::-1], [])
    with pytest.raises(MashupError, match="another order") as error:
        collect(config, settings, out, candidates=trio[:2], task=reordered)
    assert str(out) in error.value.line() and "new --out" in error.value.line()
    assert collect(config, settings, out, candidates=trio[:2], task=TASK)["instances"] == 3


def test_a_task_file_with_its_rows_reordered_is_refused_on_resume(trio, tiny_base, other_base, tmp_path,
                                                                  constant_reward) -> None:
    data = tmp_path / "sums.jsonl"
    rows = [json.dumps({"question": f"What is {i} + {i}?", "answer": 2 * i}) + "\n" for i in range(10)]
    data.write_text("".join(rows))
    config, out, settings = two_candidates(tiny_base, other_base), tmp_path / "col", CollectConfig(
        task=str(data), instances=2, rollouts=1)
    collect(config, settings, out, candidates=trio[:2])
    assert "ordered_fingerprint" in json.loads((out / "task_data.json").read_text())
    cut_back(out)
    data.write_text("".join(rows[::-1]))
    with pytest.raises(MashupError, match="another order"):
        collect(config, settings, out, candidates=trio[:2])
    assert not (out / "summary.json").exists()


def test_a_collect_recorded_without_the_order_is_checked_on_its_rows(trio, tiny_base, other_base, tmp_path,
                                                                     constant_reward) -> None:
    """task_data.json as the previous release wrote it: its order-free fingerprint alone."""
    config, out, settings = two_candidates(tiny_base, other_base), tmp_path / "col", CollectConfig(
        task="tiny", instances=3, rollouts=1)
    collect(config, settings, out, candidates=trio[:2], task=TASK)
    cut_back(out)
    record = json.loads((out / "task_data.json").read_text())
    (out / "task_data.json").write_text(json.dumps({"task": "tiny", "fingerprint": record["fingerprint"]}))
    other = SwitchTask("tiny", "number", [number_item(f"What is {i} + 2?", str(i + 2)) for i in range(8)], [])
    with pytest.raises(MashupError, match="other data"):
        collect(config, settings, out, candidates=trio[:2], task=other)
    assert collect(config, settings, out, candidates=trio[:2], task=TASK)["instances"] == 3


def test_the_ordered_fingerprint_follows_the_file_order(tmp_path) -> None:
    from mashup.switch.tasks import ordered_task_fingerprint, task_fingerprint

    rows = [json.dumps({"question": f"q{i}", "answer": i}) + "\n" for i in range(6)]
    (tmp_path / "a.jsonl").write_text("".join(rows))
    (tmp_path / "b.jsonl").write_text("".join(rows[1:] + rows[:1]))
    a, b = load_switch_task(str(tmp_path / "a.jsonl")), load_switch_task(str(tmp_path / "b.jsonl"))
    assert task_fingerprint(a) == task_fingerprint(b)  # the order-free digest older collects recorded
    assert ordered_task_fingerprint(a) != ordered_task_fingerprint(b)
    assert ordered_task_fingerprint(a) == ordered_task_fingerprint(load_switch_task(str(tmp_path / "a.jsonl")))


# --- role: a free label, unless it reads as a misspelt 'aligned' ---

# two edits or more from 'aligned' (English words among them), or built on the word: labels
@pytest.mark.parametrize("role", ["base", "expert ", "teacher", "pretrained", "aligned-sft", "unaligned", "misaligned",
                                  "aligns", "signed", "assigned", "alignment", "alig", "Alig"])
def test_any_other_role_is_a_label(tiny_base, role: str) -> None:
    assert CandidateConfig(model=str(tiny_base), role=role).role == role


# the same but for case or surrounding spaces, or one edit away (a letter added, dropped, changed, two swapped)
@pytest.mark.parametrize("role", ["Aligned", "ALIGNED", " aligned\t", "aligend", "alinged", "aligned ", "aligner",
                                  "alignee", "aligne", "alligned", "Alined", "al igned"])
def test_a_misspelt_aligned_is_refused(tiny_base, role: str) -> None:
    with pytest.raises(ValidationError, match="misspelt 'aligned'"):
        CandidateConfig(model=str(tiny_base), role=role)


def test_a_misspelt_aligned_in_yaml_is_one_line(tmp_path, tiny_base, capsys, monkeypatch) -> None:
    path = tmp_path / "switch.yaml"
    path.write_text(yaml.safe_dump({"candidates": [{"model": str(tiny_base), "role": "Aligned"},
                                                   {"model": str(tiny_base), "name": "b"}]}))
    _, err = run_cli(["switch", "generate", "--config", path, "hi"], capsys, monkeypatch, expect=1)
    assert "candidates.0.role" in err and "misspelt 'aligned'" in err and err.strip().count("\n") == 0


def _recorded(path: Path, candidates: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "switch_config.yaml").write_text(yaml.safe_dump({"candidates": candidates}))
    return path


def test_dirs_recorded_with_a_free_role_label_still_load_and_match(tmp_path, tiny_base) -> None:
    """`role: base` was a label before roles were checked: collect and switcher dirs holding it still match a
    config that labels the candidate otherwise (only 'aligned' changes what a candidate does)."""
    recorded = [{"name": "a", "model": str(tiny_base), "role": "aligned"},
                {"name": "b", "model": str(tiny_base), "role": "base"}]
    collect_dir = _recorded(tmp_path / "collect", recorded)
    switcher_dir = _recorded(tmp_path / "switcher", recorded)
    config = SwitchConfig(candidates=[CandidateConfig(name="a", model=str(tiny_base), role="aligned"),
                                      CandidateConfig(name="b", model=str(tiny_base), role="expert")])
    assert checked_collect_dirs(config, [collect_dir]) == [collect_dir]
    require_adapter_candidates(switcher_dir / "adapter", config.candidates)
    assert load_config(switcher_dir / "switch_config.yaml", SwitchConfig).candidates[1].role == "base"
    unaligned = config.model_copy(update={"candidates": [c.model_copy(update={"role": "expert"})
                                                         for c in config.candidates]})
    with pytest.raises(CheckpointError, match=r"candidate 0 \(a\): role aligned recorded, expert in the config"):
        require_adapter_candidates(switcher_dir / "adapter", unaligned.candidates)


# --- candidates recorded with relative paths (switcher dirs of older releases, every collect dir) ---

@pytest.fixture()
def project(tmp_path) -> Path:
    """A project dir with two model dirs, a switcher dir and a collect dir recorded with relative paths."""
    root = tmp_path / "proj"
    for name in ("m1", "m2"):
        (root / "models" / name).mkdir(parents=True)
    recorded = [{"name": "a", "model": "models/m1", "role": "aligned"}, {"name": "b", "model": "models/m2"}]
    _recorded(root / "sw_out", recorded)
    _recorded(root / "collect", recorded)
    return root


def _absolute(root: Path, order: list[str]) -> list[CandidateConfig]:
    return [CandidateConfig(name=name, model=str(root / "models" / f"m{i}"),
                            role="aligned" if name == "a" else "candidate") for name, i in zip(order, (1, 2))]


@pytest.mark.parametrize("where", ["proj", "elsewhere"])
def test_relative_recorded_paths_match_the_same_dirs_from_any_dir(project, tmp_path, monkeypatch, where) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / where)
    mine = _absolute(project, ["a", "b"])
    require_adapter_candidates(project / "sw_out" / "adapter", mine)
    config = SwitchConfig(candidates=mine)
    assert checked_collect_dirs(config, [project / "collect"]) == [project / "collect"]


def test_a_reordered_candidate_is_named_with_its_field(project, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    swapped = [CandidateConfig(name="a", model=str(project / "models" / "m2"), role="aligned"),
               CandidateConfig(name="b", model=str(project / "models" / "m1"))]
    expected = re.escape(f"candidate 0 (a): model models/m1 recorded, {project / 'models' / 'm2'} in the config")
    with pytest.raises(CheckpointError, match=expected) as error:
        require_adapter_candidates(project / "sw_out" / "adapter", swapped)
    assert "(a, b)" not in error.value.line()
    with pytest.raises(MashupError, match=expected):
        checked_collect_dirs(SwitchConfig(candidates=swapped), [project / "collect"])


def test_a_missing_or_extra_candidate_is_named(project, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = _absolute(project, ["a", "b"])
    with pytest.raises(CheckpointError, match=r"candidate 1 \(b\): only recorded \(2 recorded, 1 in the config\)"):
        require_adapter_candidates(project / "sw_out" / "adapter", mine[:1])
    third = CandidateConfig(name="c", model=str(project / "models" / "m1"))
    with pytest.raises(CheckpointError, match=r"candidate 2 \(c\): only in the config"):
        require_adapter_candidates(project / "sw_out" / "adapter", [*mine, third])


# --- `switch ... --json` writes strict JSON, as every verb does ---

def test_switch_json_output_writes_null_for_nan(tmp_path, tiny_base, capsys, monkeypatch) -> None:
    path = tmp_path / "switch.yaml"
    save_config(SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                         CandidateConfig(model=str(tiny_base), name="b")]), path)
    summary = {"instances": 1, "labelled": 0, "dropped": {}, "labels": {"a": 0, "b": 0},
               "mean_reward_after_segment": {"a": math.nan, "b": 1.0}, "seconds_this_run": 0.1}
    monkeypatch.setattr(collect_module, "collect", lambda *a, **k: summary)
    out, _ = run_cli(["switch", "collect", "--config", path, "--task", "tiny", "--out", tmp_path / "c", "--json"],
                     capsys, monkeypatch)

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")
    assert json.loads(out, parse_constant=refuse)["mean_reward_after_segment"] == {"a": None, "b": 1.0}
