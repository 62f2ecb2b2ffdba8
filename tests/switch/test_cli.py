"""`mashup switch collect / train / eval / generate` end to end on tiny models and a multiple-choice file."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_mc_jsonl
from tests.test_cli import run_cli


def _config(tmp_path: Path, tiny_base: Path, other_base: Path, expert_lora: Path) -> Path:
    config = {"candidates": [{"model": str(tiny_base), "role": "aligned", "name": "aligned"},
                             {"model": str(other_base), "name": "other"},
                             {"model": str(tiny_base), "adapter": str(expert_lora), "name": "expert"}],
              "generation": {"segment_tokens": 3, "max_new_tokens": 12}}
    path = tmp_path / "switch.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_collect_train_eval_generate(tmp_path, tiny_base, other_base, expert_lora, capsys, monkeypatch) -> None:
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    task = write_mc_jsonl(tmp_path / "quiz.jsonl", 24)
    out, _ = run_cli(["switch", "collect", "--config", config, "--task", task, "--out", tmp_path / "collect",
                      "--instances", 6, "--rollouts", 1, "--reward-mode", "margin", "--json"], capsys, monkeypatch)
    summary = json.loads(out)
    assert summary["instances"] == 6 and summary["labelled"] == 6  # margins are continuous: no ties
    out, _ = run_cli(["switch", "train", "--config", config, "--data", tmp_path / "collect", "--out",
                      tmp_path / "switcher", "--max-steps", 2, "--batch-size", 2, "--json"], capsys, monkeypatch)
    trained = json.loads(out)
    adapter = tmp_path / "switcher" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and trained["train_examples"] + trained["held_out"] == 6
    for name in ("curve.json", "train_config.yaml", "switch_config.yaml", "version.json", "result.json"):
        assert (tmp_path / "switcher" / name).is_file(), name
    written = yaml.safe_load((tmp_path / "switcher" / "train_config.yaml").read_text())
    assert (written["lr"], written["eval_every"]) == (5e-4, 1)  # as trained: the switcher's lr, 10% of 2 steps
    out, _ = run_cli(["switch", "eval", "--config", config, "--task", task, "--out", tmp_path / "eval",
                      "--adapter", adapter, "--max-examples", 3, "--json"], capsys, monkeypatch)
    result = json.loads(out)
    rows = {r["system"]: r for r in result["rows"]}
    assert set(rows) == {"alone:aligned", "alone:other", "alone:expert", "random", "switcher-untrained",
                         "switcher-trained", "router", "logit-average", "merge"}
    for row in rows.values():
        low, high = row["ci95"]
        assert row["n"] == 3 and low <= row["accuracy"] <= high
    assert rows["alone:other"]["segment_share"] == [0.0, 1.0, 0.0]
    assert set(result["cost"]) == set(rows) - {"alone:aligned", "alone:other", "alone:expert"}
    for name in ("results.json", "report.md", "writers.png", "switch_config.yaml", "eval_config.yaml"):
        assert (tmp_path / "eval" / name).is_file(), name
    out, _ = run_cli(["switch", "generate", "--config", config, "--adapter", adapter, "Which is a colour?",
                      "--json"], capsys, monkeypatch)
    trace = json.loads(out)
    assert [s["writer"] for s in trace["segments"]][0] == 0 and trace["text"]


def test_generate_prints_each_segments_writer(tmp_path, tiny_base, other_base, expert_lora, capsys,
                                            monkeypatch) -> None:
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    out, _ = run_cli(["switch", "generate", "--config", config, "--writer", "expert", "Which is a colour?"],
                     capsys, monkeypatch)
    segments = out.rstrip().split("\n\n")[-1].splitlines()  # the response, a blank line, one line per segment
    assert segments and all(line.startswith("[expert] '") for line in segments), out


def test_bad_config_is_one_line(tmp_path, tiny_base, capsys, monkeypatch) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"candidates": [{"model": str(tiny_base), "role": "aligned"},
                                                   {"model": str(tiny_base), "role": "aligned", "name": "b"}]}))
    _, err = run_cli(["switch", "generate", "--config", path, "hi"], capsys, monkeypatch, expect=1)
    assert "at most one candidate may have role 'aligned'" in err and err.strip().count("\n") == 0


def test_switcher_training_options_are_range_checked(tmp_path, tiny_base, other_base, expert_lora, capsys,
                                                     monkeypatch) -> None:
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    _, err = run_cli(["switch", "train", "--config", config, "--data", tmp_path / "collect", "--out",
                      tmp_path / "switcher", "--lr", -1], capsys, monkeypatch, expect=2)
    assert "invalid value for --lr: " in err and "greater than 0" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "switcher").exists()


def _error_alone(err: str) -> str:
    """One error line and nothing else: no progress bar drawn before it (no bar glyphs, no empty bar line)."""
    assert err.strip().count("\n") == 0 and err.lstrip().startswith("error:"), err
    assert "━" not in err and "None" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["missing", "a file", "not a collect"])
def test_bad_train_input_is_its_error_alone(case, tmp_path, tiny_base, other_base, expert_lora, capsys,
                                            monkeypatch) -> None:
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    data = tmp_path / "collect"
    if case == "a file":
        data.write_text("not a dir")
    elif case == "not a collect":
        data.mkdir()
    _, err = run_cli(["switch", "train", "--config", config, "--data", data, "--out", tmp_path / "switcher"],
                     capsys, monkeypatch, expect=1)
    expected = {"missing": "no such collect dir", "a file": "--data is not a dir", "not a collect": "not a collect dir"}
    assert expected[case] in _error_alone(err)
    assert not (tmp_path / "switcher").exists()


def test_bad_collect_input_is_its_error_alone(tmp_path, tiny_base, other_base, expert_lora, capsys,
                                              monkeypatch) -> None:
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    _, err = run_cli(["switch", "collect", "--config", config, "--task", tmp_path / "no-such-task.jsonl", "--out",
                      tmp_path / "collect"], capsys, monkeypatch, expect=1)
    _error_alone(err)
    assert not (tmp_path / "collect").exists()


def test_progress_shows_one_bar_per_name_from_its_first_update(monkeypatch) -> None:
    from mashup.switch import cli

    made = []
    real_bar = cli._bar
    monkeypatch.setattr(cli, "_bar", lambda: made.append(real_bar()) or made[-1])
    with cli._bars() as update:
        assert not made  # nothing drawn before the first update
        for done in range(3):
            update("collect a", done, 3)
        update("eval b", 1, 2)
    assert len(made) == 1 and [t.description for t in made[0].tasks] == ["collect a", "eval b"]
    assert [t.completed for t in made[0].tasks] == [2, 1]


def _number_task(path: Path, n: int = 6) -> Path:
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("verb", ["collect", "eval"])
def test_a_missing_task_file_is_not_found_before_the_models_load(verb, tmp_path, tiny_base, other_base, expert_lora,
                                                                 capsys, monkeypatch) -> None:
    for module in ("mashup.switch.collect", "mashup.switch.evaluate"):  # modules, not mashup.switch's functions
        monkeypatch.setattr(importlib.import_module(module), "load_candidates",
                            lambda *a, **k: pytest.fail("models loaded before the check"))
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    monkeypatch.chdir(tmp_path)
    _, err = run_cli(["switch", verb, "--config", config, "--task", "mine_missing.jsonl", "--out", tmp_path / "o"],
                     capsys, monkeypatch, expect=1)
    assert "data file not found in mine_missing.jsonl" in _error_alone(err)
    assert not (tmp_path / "o").exists()


def test_eval_takes_a_reward(tmp_path, tiny_base, other_base, expert_lora, capsys, monkeypatch) -> None:
    from mashup.switch import evaluate, rewards

    built: list[str] = []

    def spy(*args: object) -> rewards.Reward:
        reward = rewards.build_reward(*args)  # type: ignore[arg-type]
        built.append(type(reward).__name__)
        return reward

    monkeypatch.setattr(evaluate, "build_reward", spy)
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    task = _number_task(tmp_path / "sums.jsonl")
    for name, used in (("auto", "NumberMatch"), ("number_closeness", "NumberCloseness")):
        flags = ["--reward", name] if name != "auto" else []  # auto: the default
        run_cli(["switch", "eval", "--config", config, "--task", task, "--out", tmp_path / name, "--max-examples", 1,
                 "--system", "alone:aligned", *flags, "--json"], capsys, monkeypatch)
        assert built[-1] == used
        assert yaml.safe_load((tmp_path / name / "eval_config.yaml").read_text())["reward"]["name"] == name


def test_eval_refuses_a_reward_that_cannot_score_the_task(tmp_path, tiny_base, other_base, expert_lora, capsys,
                                                          monkeypatch) -> None:
    monkeypatch.setattr("mashup.switch.evaluate.load_candidates", lambda *a, **k: pytest.fail("models loaded"))
    config = _config(tmp_path, tiny_base, other_base, expert_lora)
    _, err = run_cli(["switch", "eval", "--config", config, "--task", _number_task(tmp_path / "sums.jsonl"), "--out",
                      tmp_path / "eval", "--reward", "choice_cloze"], capsys, monkeypatch, expect=1)
    assert "reward 'choice_cloze' scores choice answers" in _error_alone(err)
    assert not (tmp_path / "eval").exists()
