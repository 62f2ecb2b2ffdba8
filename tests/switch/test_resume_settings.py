"""What a collect's resume compares beyond the candidates' weights (their chat template), how it compares paths
that older collects recorded relative (as the same string, never by a trailing match), that checkpoint ids are
recorded in full, that an adapter dir named as a named model matches itself, and that a cut-short 'aligned' is
refused."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mashup.config import load_config
from mashup.errors import MashupError
from mashup.library import Library
from mashup.switch.collect import collect
from mashup.switch.config import CandidateConfig, CollectConfig, SwitchConfig, candidates_difference, resolved_candidate
from mashup.switch.rewards import RewardResult
from mashup.switch.tasks import SwitchTask, number_item
from mashup.switch.train import recorded_config
from tests.switch.helpers import cut_back, generation

collect_module = importlib.import_module("mashup.switch.collect")
TASK = SwitchTask("tiny", "number", [number_item(f"What is {i} + 1?", str(i + 1)) for i in range(6)], [])
SETTINGS = CollectConfig(task="tiny", instances=3, rollouts=1, seed=1)


@pytest.fixture(autouse=True)
def varied_reward(monkeypatch) -> None:
    monkeypatch.setattr(collect_module, "build_reward",
                        lambda *a: lambda item, text: RewardResult(float(len(text) % 7), True))


def _config(first: str, second: str, **aligned) -> SwitchConfig:
    return SwitchConfig(candidates=[CandidateConfig(model=first, role="aligned", name="a", **aligned),
                                    CandidateConfig(model=second, name="b")],
                        generation=generation(segment_tokens=3, max_new_tokens=12))


# --- a candidate's chat template changes its prompts, so a resume compares it ---

def test_a_resume_with_another_chat_template_is_refused(trio, tiny_base, other_base, tmp_path) -> None:
    out = tmp_path / "col"
    collect(_config(str(tiny_base), str(other_base)), SETTINGS, out, candidates=trio[:2], task=TASK)
    cut_back(out)
    with pytest.raises(MashupError, match="candidate 0 .*chat_template auto recorded, off in the config"):
        collect(_config(str(tiny_base), str(other_base), chat_template="off"), SETTINGS, out, candidates=trio[:2],
                task=TASK)
    collect(_config(str(tiny_base), str(other_base)), SETTINGS, out, candidates=trio[:2], task=TASK)
    assert (out / "summary.json").is_file()


# --- paths an older collect recorded relative: the same string only ---

@pytest.fixture()
def old_collect(trio, tiny_base, other_base, tmp_path, monkeypatch) -> Path:
    """A collect made from p1 on ``models/a`` whose record holds the path relative, as older versions wrote it;
    p2 holds a ``models/a`` too."""
    for project in ("p1", "p2"):
        (tmp_path / project / "models").mkdir(parents=True)
        (tmp_path / project / "models" / "a").symlink_to(tiny_base)
    monkeypatch.chdir(tmp_path / "p1")
    out = tmp_path / "col"
    collect(_config("models/a", str(other_base)), SETTINGS, out, candidates=trio[:2], task=TASK)
    record = yaml.safe_load((out / "switch_config.yaml").read_text())
    record["candidates"][0]["model"] = "models/a"
    (out / "switch_config.yaml").write_text(yaml.safe_dump(record))
    cut_back(out)
    return out


def test_a_relative_recorded_path_is_not_matched_by_another_dir_ending_with_it(old_collect, trio, other_base,
                                                                                 tmp_path) -> None:
    given = _config(str(tmp_path / "p2" / "models" / "a"), str(other_base))
    with pytest.raises(MashupError, match="other candidates .*candidate 0 .*model models/a recorded"):
        collect(given, SETTINGS, old_collect, candidates=trio[:2], task=TASK)


def test_a_relative_recorded_path_resumes_on_the_same_spelling(old_collect, trio, other_base) -> None:
    collect(_config("models/a", str(other_base)), SETTINGS, old_collect, candidates=trio[:2], task=TASK)
    assert (old_collect / "summary.json").is_file()


def test_train_still_matches_a_relative_recorded_path_by_its_end(tmp_path) -> None:
    recorded = [CandidateConfig(model="models/a", role="aligned")]
    (tmp_path / "models" / "a").mkdir(parents=True)
    given = [CandidateConfig(model=str(tmp_path / "models" / "a"), role="aligned")]
    assert candidates_difference(recorded, given) is None
    assert candidates_difference(recorded, given, suffix_match=False) is not None


def test_an_absolute_record_resumes_on_a_relative_spelling_of_its_dir(trio, tiny_base, other_base, tmp_path,
                                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "col"
    collect(_config(str(tiny_base), str(other_base)), SETTINGS, out, candidates=trio[:2], task=TASK)
    cut_back(out)
    collect(_config(os.path.relpath(tiny_base), str(other_base)), SETTINGS, out, candidates=trio[:2], task=TASK)
    assert (out / "summary.json").is_file()


# --- checkpoint ids are recorded in full ---

def test_collect_and_train_record_a_checkpoint_prefix_as_its_full_id(trio, tiny_base, expert_lora, tmp_path) -> None:
    library = tmp_path / "lib"
    record = Library(library).add([expert_lora])[0]
    config = SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                      CandidateConfig(checkpoint=record.id[:6], name="b")],
                          generation=generation(segment_tokens=3, max_new_tokens=12), library=str(library))
    collect(config, SETTINGS, tmp_path / "col", candidates=trio[:2], task=TASK)
    recorded = load_config(tmp_path / "col" / "switch_config.yaml", SwitchConfig)
    assert recorded.candidates[1].checkpoint == record.id and len(record.id) > 6
    trained = recorded_config(config, str(tiny_base), tmp_path / "sw")
    assert trained.candidates[1].checkpoint == record.id


def test_a_short_checkpoint_prefix_resumes_and_trains_on_its_full_record(trio, tiny_base, expert_lora,
                                                                         tmp_path) -> None:
    """A config naming a checkpoint by a prefix shorter than the comparison's minimum (any unique prefix loads) is
    the record's full id, resolved through the library, when a resume or a training compares them."""
    from mashup.switch.train import _require_same_candidates

    library = tmp_path / "lib"
    record = Library(library).add([expert_lora])[0]
    config = SwitchConfig(candidates=[CandidateConfig(model=str(tiny_base), role="aligned", name="a"),
                                      CandidateConfig(checkpoint=record.id[:3], name="b")],
                          generation=generation(segment_tokens=3, max_new_tokens=12), library=str(library))
    out = tmp_path / "col"
    collect(config, SETTINGS, out, candidates=trio[:2], task=TASK)
    cut_back(out)
    collect(config, SETTINGS, out, candidates=trio[:2], task=TASK)
    assert (out / "summary.json").is_file()
    _require_same_candidates(config, out)


# --- an adapter dir is a dir, whatever its name ---

def test_an_adapter_dir_named_as_a_named_model_matches_itself(tmp_path, tiny_base, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    given = CandidateConfig(model=str(tiny_base), adapter="smollm2-135m")
    assert resolved_candidate(given).adapter == str(tmp_path / "smollm2-135m")
    assert candidates_difference([resolved_candidate(given)], [given]) is None
    assert candidates_difference([resolved_candidate(given)], [given], suffix_match=False) is None


# --- a cut-short 'aligned' would leave no aligned candidate without a word ---

@pytest.mark.parametrize("role", ["align", "Align", "ALIGN", "aligne", "Aligne"])
def test_a_cut_short_aligned_is_refused(tiny_base, role: str) -> None:
    with pytest.raises(ValidationError, match="misspelt 'aligned'"):
        CandidateConfig(model=str(tiny_base), role=role)


@pytest.mark.parametrize("role", ["alig", "al", "aligns", "alignment"])
def test_shorter_cuts_and_words_built_on_it_are_labels(tiny_base, role: str) -> None:
    assert CandidateConfig(model=str(tiny_base), role=role).role == role
