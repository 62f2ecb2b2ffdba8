"""The experiment config: fixed keys, validation with one clear error, profiles, the plan and its estimate."""

from __future__ import annotations

import pytest
import yaml

from mashup.errors import MashupError
from mashup.experiment import ExperimentConfig, load_experiment_config, load_profile, plan_experiment, profile_names
from mashup.experiment.config import DEFAULT_LRS
from mashup.experiment.runner import run_experiment
from tests.experiment.helpers import tiny_config, write_tasks

FIXED_KEYS = ("base", "tasks", "mode", "seeds", "lrs", "max_steps", "epochs", "eval_every", "batch_size", "samples",
              "k", "merge_method", "arms", "scoring", "out")


def test_fixed_keys_and_defaults():
    config = ExperimentConfig(tasks=["arc_easy", "sciq", "piqa"])
    assert set(FIXED_KEYS) <= set(ExperimentConfig.model_fields)
    assert config.seeds == [0, 1, 2] and config.lrs == DEFAULT_LRS["lora"] and config.mode == "lora"
    assert ExperimentConfig(tasks=["arc_easy", "sciq"], k=1, mode="full").lrs == [5e-6, 1.6e-5, 2.7e-5, 3.8e-5, 5e-5]
    assert ExperimentConfig(tasks=["arc_easy", "sciq"], k=1, seeds=[3, 7]).seeds == [3, 7]
    assert config.tasks[0].name == "arc_easy" and config.tasks[0].train is None


@pytest.mark.parametrize("change, message", [
    ({"arms": ["mashup_loss"]}, "must include 'scratch'"),
    ({"tasks": ["arc_easy", "arc_easy"]}, "repeat"),
    ({"k": 2}, "only 1 source task"),
    ({"merge_grid": {"k": [1, 2]}}, "only 1 source task"),
    ({"tasks": ["arc_easy", "my_data"]}, "not a named task"),
    ({"arms": ["scratch", "mashup_accuracy"], "samples_sweep": [8]}, "mashup_loss"),
    ({"seeds": 0}, "seeds"),
    ({"lrs": [1e-3, 1e-3]}, "distinct"),
    ({"lrs": [1e-3, 2.0]}, "at most 1"),
    ({"unknown_key": 1}, "unknown_key"),
])
def test_invalid_configs_name_the_problem(tmp_path, change, message):
    raw = {"tasks": ["arc_easy", "sciq"], "k": 1, **change}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MashupError, match=message) as error:
        load_experiment_config(path)
    assert str(path) in str(error.value)


def test_negative_seeds_are_refused_at_load_naming_them_and_the_fix(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["arc_easy", "sciq"], "k": 1, "seeds": [0, -1, 2]}))
    with pytest.raises(MashupError) as error:
        load_experiment_config(path)
    line = error.value.line()
    assert str(path) in line and "'seeds'" in line and "[-1]" in line and "seeds: 3" in line
    assert ExperimentConfig(tasks=["arc_easy", "sciq"], k=1, seeds=[0, 5]).seeds == [0, 5]


def test_a_negative_selection_seed_is_refused_at_load(tmp_path):
    """random.Random seeds with the absolute value: -3 would draw seed 3's sample under another job key."""
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["arc_easy", "sciq"], "k": 1, "selection_seed": -3}))
    with pytest.raises(MashupError) as error:
        load_experiment_config(path)
    line = error.value.line()
    assert str(path) in line and "'selection_seed'" in line and "must be >= 0, got -3" in line and "\n" not in line
    assert ExperimentConfig(tasks=["arc_easy", "sciq"], k=1, selection_seed=3).selection_seed == 3


def test_profiles_ship_with_the_package_and_validate():
    assert profile_names() == ["cpu-mini", "paper-gemma3", "paper-smollm2"]
    mini = load_profile("cpu-mini")
    assert mini.base == "smollm2-135m" and mini.scoring == "cloze" and len(mini.seeds) == 2
    assert 3 <= len(mini.tasks) <= 4 and len(mini.lrs) >= 2 and mini.samples_sweep and mini.merge_grid
    for name, base in (("paper-smollm2", "smollm2-135m"), ("paper-gemma3", "gemma3-270m")):
        paper = load_profile(name)
        assert paper.base == base and len(paper.tasks) == 8 and "sciq" in [t.name for t in paper.tasks]
        assert (paper.lrs, paper.seeds, paper.batch_size, paper.epochs) == (DEFAULT_LRS["lora"], [0, 1, 2], 32, 1)
        assert (paper.samples, paper.k, paper.merge_method, paper.scoring) == (256, 2, "average", "cloze")
    with pytest.raises(MashupError, match="cpu-mini"):
        load_profile("nope")


def test_a_base_that_is_not_available_fails_before_anything_is_written(tmp_path, monkeypatch):
    import mashup.named_models as named_models

    monkeypatch.delitem(named_models.NAMED_MODELS, "gemma3-270m", raising=False)
    config = load_profile("paper-gemma3").model_copy(update={"out": str(tmp_path / "out")})
    with pytest.raises(MashupError, match="unknown base model 'gemma3-270m'.*smollm2-135m"):
        run_experiment(config)
    assert not (tmp_path / "out").exists()


def test_dry_run_plans_every_unit_with_an_estimate(tmp_path, tiny_base):
    config = tiny_config(tiny_base, write_tasks(tmp_path), tmp_path / "out")
    planned = plan_experiment(config)
    ids = [p.unit.id for p in planned]
    assert len(ids) == len(set(ids)) and all(p.estimate_seconds > 0 and not p.recorded for p in planned)
    per_task = 2 * 2  # lrs x seeds
    assert sum(i.startswith("train/alpha/scratch/") for i in ids) == per_task
    assert sum(i.startswith("train/alpha/oracle:") for i in ids) == 2 * per_task  # C(2, 1) merges
    assert {i for i in ids if i.startswith("train/alpha/grid:")} == {
        f"train/alpha/grid:{m}:{k}/seed={s}" for m in ("average", "ties") for k in (1, 2) for s in (0, 1)}
    shared = {p.unit.id for p in planned if p.shared}
    assert "train/alpha/grid:average:1/seed=0" in shared and "train/alpha/samples:4/seed=1" in shared
    assert not any(i.startswith(("train/alpha/scratch/", "select/")) for i in shared)
    assert not (tmp_path / "out").exists()
