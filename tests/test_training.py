import json
import re

import pytest
import yaml
from pydantic import ValidationError

from mashup.config import DataConfig, EvalConfig, TrainConfig
from mashup.errors import MashupError, TrainingError
from mashup.verbs import evaluate_model, train_model
from tests.test_cli import run_cli

DATA = dict(scoring="letter", max_length=128)


def _train(tmp_path, tiny_base, mc_file, name, **kwargs):
    config = TrainConfig(**{"batch_size": 8, "max_steps": 4, "eval_every": 2, "lr": 5e-3, "lora_r": 4,
                            "target_modules": ["q_proj", "v_proj"], **kwargs})
    return train_model(str(tiny_base), DataConfig(data=str(mc_file), **DATA), config, tmp_path / name,
                       eval_config=EvalConfig(batch_size=4))


def test_lora_training_writes_a_complete_run_dir(tmp_path, tiny_base, mc_file):
    summary = _train(tmp_path, tiny_base, mc_file, "run")
    out = tmp_path / "run"
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter_init.safetensors",
                 "curve.csv", "curve.json", "train_config.yaml", "data_config.yaml", "version.json", "result.json"):
        assert (out / name).exists(), name
    steps = [p["step"] for p in json.loads((out / "curve.json").read_text())]
    assert steps == [0, 2, 4]
    assert summary.result.total_steps == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp")]


def test_result_json_records_the_final_out_dir_not_the_staging_one(tmp_path, tiny_base, mc_file):
    summary = _train(tmp_path, tiny_base, mc_file, "final", max_steps=1, eval_every=1)
    result = json.loads((tmp_path / "final" / "result.json").read_text())
    assert result["out"] == summary.out == str(tmp_path / "final")
    assert result["weights_dir"] == summary.weights_dir == str(tmp_path / "final" / "adapter")


@pytest.mark.fp32
def test_step_zero_equals_the_init_accuracy_and_final_equals_eval(tmp_path, tiny_base, mc_file, tiny_loras):
    data = DataConfig(data=str(mc_file), **DATA)
    config = TrainConfig(batch_size=8, max_steps=3, lr=5e-3)
    summary = train_model(str(tiny_base), data, config, tmp_path / "from-init", init=tiny_loras[0],
                          eval_config=EvalConfig(batch_size=4))
    init_eval = evaluate_model(str(tiny_base), data, adapter=tiny_loras[0])
    assert summary.result.curve[0].accuracy == init_eval.accuracy
    assert summary.result.curve[0].loss == pytest.approx(init_eval.loss, abs=1e-5)
    final_eval = evaluate_model(str(tiny_base), data, adapter=tmp_path / "from-init" / "adapter")
    assert summary.result.final.accuracy == final_eval.accuracy
    assert summary.result.final.loss == pytest.approx(final_eval.loss, abs=1e-4)


def test_training_lowers_the_answer_loss(tmp_path, tiny_base, mc_file):
    summary = _train(tmp_path, tiny_base, mc_file, "lower", max_steps=8, eval_every=8, lr=2e-2)
    assert summary.result.final.loss < summary.result.curve[0].loss


def test_same_seed_same_curve(tmp_path, tiny_base, mc_file):
    first = _train(tmp_path, tiny_base, mc_file, "a", seed=7)
    second = _train(tmp_path, tiny_base, mc_file, "b", seed=7)
    assert [(p.accuracy, round(p.loss, 5)) for p in first.result.curve] == \
        [(p.accuracy, round(p.loss, 5)) for p in second.result.curve]


@pytest.mark.fp32
def test_micro_batches_give_the_same_update(tmp_path, tiny_base, mc_file):
    whole = _train(tmp_path, tiny_base, mc_file, "whole", max_steps=2, eval_every=2)
    split = _train(tmp_path, tiny_base, mc_file, "split", max_steps=2, eval_every=2, micro_batch_size=3)
    assert whole.result.final.loss == pytest.approx(split.result.final.loss, abs=1e-4)


@pytest.mark.fp32
def test_full_fine_tuning_uses_the_same_loop(tmp_path, tiny_base, mc_file):
    summary = _train(tmp_path, tiny_base, mc_file, "full", mode="full", lr=1e-3)
    out = tmp_path / "full"
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()
    assert not (out / "adapter").exists()
    reloaded = evaluate_model(str(tiny_base), DataConfig(data=str(mc_file), **DATA), model_dir=out / "model")
    assert reloaded.accuracy == summary.result.final.accuracy


def test_failed_training_leaves_no_output(tmp_path, tiny_base, mc_file, monkeypatch):
    import mashup.training as training

    def explode(*args, **kwargs):
        raise MashupError("boom")

    monkeypatch.setattr(training, "_train_step", explode)
    with pytest.raises(MashupError):
        _train(tmp_path, tiny_base, mc_file, "broken")
    assert [p.name for p in tmp_path.iterdir()] == ["target.jsonl"]



def test_diverged_training_stops_with_one_clear_error_and_no_output(tmp_path, tiny_base, mc_file, monkeypatch):
    """A NaN gradient (as cuDNN's attention backward gave on an H200) stops training before it reaches
    the weights: no NaN adapter is saved to look like a finished run."""
    import mashup.training as training

    real = training.answer_losses

    def poisoned(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(training, "answer_losses", poisoned)
    with pytest.raises(TrainingError, match="training diverged at step 1: the gradient norm is nan"):
        _train(tmp_path, tiny_base, mc_file, "diverged")
    assert [p.name for p in tmp_path.iterdir()] == ["target.jsonl"]

@pytest.mark.fp32
def test_fresh_lora_starts_exactly_at_the_base(tmp_path, tiny_base, mc_file):
    """Why the demo may reuse the base's evaluation as the scratch arm's step 0: B starts at zero."""
    summary = _train(tmp_path, tiny_base, mc_file, "fresh", max_steps=1)
    base = evaluate_model(str(tiny_base), DataConfig(data=str(mc_file), **DATA))
    assert summary.result.curve[0].accuracy == base.accuracy
    assert summary.result.curve[0].loss == pytest.approx(base.loss, abs=1e-6)


@pytest.mark.parametrize(("fields", "steps", "lr", "eval_every"), [
    ({}, 4, 2e-4, 1), ({"mode": "full"}, 40, 2e-5, 4), ({"lr": 3e-3, "eval_every": 7}, 40, 3e-3, 7),
])
def test_resolved_fills_in_the_defaults_a_run_trains_with(fields, steps, lr, eval_every):
    config = TrainConfig(**fields)
    resolved = config.resolved(steps)
    assert (resolved.lr, resolved.eval_every) == (lr, eval_every)
    assert resolved.resolved(steps) == resolved  # the training loop resolves again: nothing changes
    assert config == TrainConfig(**fields)  # the given config (an experiment job's key) is left as it was
    assert resolved.model_dump(exclude={"lr", "eval_every"}) == config.model_dump(exclude={"lr", "eval_every"})


def test_the_written_configs_hold_the_lr_and_eval_every_trained_with(tmp_path, tiny_base, mc_file):
    summary = _train(tmp_path, tiny_base, mc_file, "defaults", lr=None, eval_every=None)
    written = yaml.safe_load((tmp_path / "defaults" / "train_config.yaml").read_text())
    result = json.loads((tmp_path / "defaults" / "result.json").read_text())
    assert (written["lr"], written["eval_every"]) == (2e-4, 1)  # LoRA's default; 4 steps // 10, at least 1
    assert result["train_config"] == written == summary.config
    assert [p["step"] for p in result["curve"]] == [0, 1, 2, 3, 4]  # evaluated every eval_every written
    assert TrainConfig(**written).resolved(4) == TrainConfig(**written)  # a valid config, read back as it is


@pytest.mark.parametrize("lr", [1.5, 1e38])
def test_a_learning_rate_above_one_is_refused_with_the_reason(lr):
    reason = f"learning rate {lr:g} is above 1, where AdamW updates make no sense"
    with pytest.raises(ValidationError, match=re.escape(reason)):
        TrainConfig(lr=lr)
    assert TrainConfig(lr=1.0).lr == 1.0


def test_train_with_a_huge_lr_is_one_usage_line_and_writes_nothing(tmp_path, tiny_base, mc_file, capsys,
                                                                    monkeypatch):
    _, err = run_cli(["train", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--out",
                      tmp_path / "big", "--max-steps", "1", "--lr", "1e38"], capsys, monkeypatch, expect=2)
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "invalid value for --lr: learning rate" in err and "above 1" in err
    assert [p.name for p in tmp_path.iterdir()] == ["target.jsonl"]
