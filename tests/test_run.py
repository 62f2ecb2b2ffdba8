"""`mashup run`: parity and timing figures, identical arms, no leakage from the library, no network."""

import json
import logging
import socket

import pytest

from mashup.config import DataConfig, EvalConfig, RunConfig, SelectConfig, TrainConfig
from mashup.library import Library
from mashup.run import parity, run, selection_timing
from mashup.scoring import CheckpointScore
from mashup.training import CurvePoint, TrainResult


def _result(points: list[tuple[int, float, float]], total_steps: int) -> TrainResult:
    curve = [CurvePoint(step, accuracy, 1.0, None, seconds) for step, accuracy, seconds in points]
    return TrainResult(total_steps=total_steps, train_seconds=points[-1][2], eval_seconds=0.0, curve=curve)


SCRATCH = _result([(0, 0.30, 0.0), (5, 0.50, 50.0), (10, 0.60, 100.0)], 10)


def test_parity_at_99_and_100_percent_with_and_without_overhead():
    mashup = _result([(0, 0.40, 0.0), (2, 0.595, 20.0), (4, 0.60, 40.0), (10, 0.65, 100.0)], 10)
    got = parity(mashup, SCRATCH, overhead_seconds=15.0)
    assert got["p99"] == {"step": 2, "fraction_of_steps": 0.2, "train_seconds": 20.0, "seconds_with_overhead": 35.0,
                          "ratio_to_scratch": 0.35}
    assert got["p100"] == {"step": 4, "fraction_of_steps": 0.4, "train_seconds": 40.0, "seconds_with_overhead": 55.0,
                           "ratio_to_scratch": 0.55}


def test_parity_at_step_zero_costs_only_the_overhead():
    mashup = _result([(0, 0.61, 0.0), (10, 0.62, 100.0)], 10)
    got = parity(mashup, SCRATCH, overhead_seconds=12.5)
    assert got["p100"]["step"] == 0 and got["p100"]["fraction_of_steps"] == 0.0
    assert got["p100"]["seconds_with_overhead"] == 12.5 and got["p100"]["ratio_to_scratch"] == 0.125


def test_parity_never_reached_is_none_everywhere():
    mashup = _result([(0, 0.40, 0.0), (10, 0.593, 100.0)], 10)  # 0.593 < 0.99 * 0.60 = 0.594
    got = parity(mashup, SCRATCH, overhead_seconds=5.0)
    for threshold in ("p99", "p100"):
        assert set(got[threshold].values()) == {None}


def test_selection_timing_counts_cached_scores_at_their_recorded_seconds():
    ranking = [CheckpointScore("a", None, "lora", 1.0, 0.5, 8, seconds=3.0),
               CheckpointScore("b", None, "lora", 2.0, 0.5, 8, seconds=7.0, cached=True),
               CheckpointScore("c", None, "lora", 3.0, 0.5, 8, seconds=11.0, cached=True)]
    assert selection_timing(4.0, ranking) == {"selection": 4.0, "selection_uncached": 22.0,
                                              "selection_cached_scores": 2}


def _config(tmp_path, tiny_base, mc_file, name, **kwargs) -> RunConfig:
    return RunConfig(base=str(tiny_base), data=DataConfig(data=str(mc_file), scoring="letter", max_length=96),
                     library=str(tmp_path / "lib"), out=str(tmp_path / name), baseline=True,
                     select=SelectConfig(samples=8, k=2), train=TrainConfig(batch_size=8, max_steps=2, eval_every=1),
                     eval=EvalConfig(batch_size=8), **kwargs)


def test_both_arms_train_the_merged_inits_lora_shape(tmp_path, tiny_base, tiny_loras, mc_file, caplog):
    Library(tmp_path / "lib").add(tiny_loras)  # r=4, alpha=8, q/v/up; the requested config says r=8 on 7 modules
    config = _config(tmp_path, tiny_base, mc_file, "run", add_to_library=False)
    config.train.eval_every = None  # 2 steps: resolved to 1, as _config asks, so the curves are the same
    with caplog.at_level(logging.WARNING, logger="mashup.run"):
        summary = run(config)
    shapes = {arm: {k: summary[arm]["train_config"][k] for k in ("lora_r", "lora_alpha", "target_modules",
                                                                 "lora_dropout", "use_rslora")}
              for arm in ("mashup", "scratch")}
    assert shapes["mashup"] == shapes["scratch"]
    assert shapes["scratch"]["lora_r"] == 4 and shapes["scratch"]["target_modules"] == ["q_proj", "up_proj", "v_proj"]
    assert summary["requested_train_config"]["lora_r"] == 8
    assert summary["mashup"]["train_config"] == summary["scratch"]["train_config"]
    requested, resolved = summary["requested_train_config"], summary["mashup"]["train_config"]
    assert (requested["lr"], requested["eval_every"]) == (None, None)  # as asked
    assert (resolved["lr"], resolved["eval_every"], resolved["lora_r"]) == (2e-4, 1, 4)  # as trained
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["scratch"]["train_config"] == resolved
    assert any("LoRA shape differs" in r.getMessage() for r in caplog.records)
    for arm in ("mashup", "scratch"):
        result = json.loads((tmp_path / "run" / arm / "result.json").read_text())  # the dir it is in, not a temp one
        assert (result["out"], result["weights_dir"]) == (str(tmp_path / "run" / arm), str(tmp_path / "run" / arm /
                                                                                          "adapter"))
        adapter = json.loads((tmp_path / "run" / arm / "adapter" / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"], sorted(adapter["target_modules"])) == (4, 8, ["q_proj", "up_proj",
                                                                                                   "v_proj"])


def test_second_run_on_the_same_target_does_not_select_the_first_runs_adapter(tmp_path, tiny_base, tiny_loras,
                                                                               mc_file):
    Library(tmp_path / "lib").add(tiny_loras[:2])
    first = run(_config(tmp_path, tiny_base, mc_file, "first"))
    candidates = {r.id for r in Library(tmp_path / "lib").list()} - {first["registered"]}
    config = _config(tmp_path, tiny_base, mc_file, "second")
    second = run(config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})}))
    assert first["registered"] in [e["id"] for e in second["excluded"]]
    assert first["registered"] not in second["selected"]
    ranked = {s["id"] for s in json.loads((tmp_path / "second" / "scores.json").read_text())["ranking"]}
    assert ranked == candidates and len(candidates) == 2


def test_run_on_a_named_base_makes_no_network_connection(tmp_path, tiny_base, mc_file, monkeypatch):
    """A named base (an alias such as smollm2-135m) is no Hub id: saving adapters must not look it up."""
    import mashup.named_models as named_models
    from tests.tiny import save_tiny_lora

    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled by the test")

    monkeypatch.setitem(named_models.NAMED_MODELS, "tiny-alias", named_models.NAMED_MODELS["smollm2-135m"])
    monkeypatch.setattr(named_models, "materialize_named_model", lambda name, cache_dir=None: tiny_base)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    adapters = [save_tiny_lora(tiny_base, tmp_path / f"lora{i}", seed=i, base_name="tiny-alias") for i in range(2)]
    Library(tmp_path / "lib").add(adapters)
    config = _config(tmp_path, tiny_base, mc_file, "offline")
    run(config.model_copy(update={"base": "tiny-alias"}))
    assert attempts == []


def test_renamed_copy_of_the_target_is_still_recognised_by_its_data(tmp_path, tiny_base, tiny_loras, mc_file):
    """The task name differs (another file name, rows shuffled): the data fingerprint still matches."""
    Library(tmp_path / "lib").add(tiny_loras[:2])
    first = run(_config(tmp_path, tiny_base, mc_file, "first"))
    lines = mc_file.read_text().splitlines()
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("\n".join(reversed(lines)) + "\n")
    config = _config(tmp_path, tiny_base, renamed, "second", add_to_library=False)
    second = run(config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})}))
    assert second["target"] == "renamed"
    assert [e["id"] for e in second["excluded"]] == [first["registered"]]
    record = Library(tmp_path / "lib").get(first["registered"])
    assert record.lineage["merged_from"] == first["selected"]
    assert record.lineage["trained_on"]["task"] == "target"
    assert record.data_fingerprint == record.lineage["trained_on"]["data_fingerprint"]


def test_an_identical_rerun_reuses_the_registered_checkpoint(tmp_path, tiny_base, tiny_loras, mc_file):
    """Same selection, merge and seed give the same bytes: registration is not a failure then."""
    Library(tmp_path / "lib").add(tiny_loras[:2])
    first = run(_config(tmp_path, tiny_base, mc_file, "first"))
    second = run(_config(tmp_path, tiny_base, mc_file, "second"))
    assert second["registered"] == first["registered"]
    assert len(Library(tmp_path / "lib").list()) == 3
    assert (tmp_path / "second" / "summary.json").exists()


def test_cached_scores_count_at_their_recorded_seconds(tmp_path, tiny_base, tiny_loras, mc_file):
    Library(tmp_path / "lib").add(tiny_loras[:2])
    cold = run(_config(tmp_path, tiny_base, mc_file, "cold", add_to_library=False))
    warm = run(_config(tmp_path, tiny_base, mc_file, "warm", add_to_library=False))
    assert cold["seconds"]["selection_cached_scores"] == 0
    assert warm["seconds"]["selection_cached_scores"] == 2
    scored = json.loads((tmp_path / "cold" / "scores.json").read_text())["ranking"]
    assert warm["seconds"]["selection_uncached"] == pytest.approx(
        warm["seconds"]["selection"] + sum(s["seconds"] for s in scored))
    assert warm["parity"]["p100"]["seconds_with_overhead"] is None or \
        warm["parity"]["p100"]["seconds_with_overhead"] >= warm["seconds"]["selection_uncached"]


def test_a_run_into_a_relative_out_records_its_dir_absolute(tmp_path, tiny_base, tiny_loras, mc_file, monkeypatch):
    Library(tmp_path / "lib").add(tiny_loras[:2])
    monkeypatch.chdir(tmp_path)
    summary = run(_config(tmp_path, tiny_base, mc_file, "x").model_copy(update={"out": "runs/first"}))
    record = Library(tmp_path / "lib").get(summary["registered"])
    assert record.lineage["run"] == str(tmp_path / "runs" / "first")  # readable from any working dir
    assert record.init_reference == str(tmp_path / "runs" / "first" / "mashup" / "adapter_init.safetensors")
