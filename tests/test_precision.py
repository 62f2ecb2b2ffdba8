"""The precision setting: how it resolves, and the bf16 path checked at bf16 tolerances.

torch emulates bf16 on CPUs without bf16 units, so these run (slowly, on tiny models) on every CPU.
"""

import json
import logging

import pytest
import torch

import mashup.models as models
from mashup.config import DataConfig, EvalConfig, SelectConfig, TrainConfig
from mashup.errors import MashupError
from mashup.library import Library
from mashup.models import attention_backends, resolve_precision
from mashup.verbs import evaluate_model, select, train_model
from tests.test_scoring import _independent_loss

CPU = torch.device("cpu")
DATA = dict(scoring="letter", max_length=128)


@pytest.mark.parametrize("fast_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_where_it_is_fast(monkeypatch, fast_bf16, expected):
    monkeypatch.delenv("MASHUP_PRECISION", raising=False)
    monkeypatch.setattr(models, "bf16_supported", lambda device: fast_bf16)
    assert resolve_precision(None, CPU) == expected
    assert resolve_precision("auto", CPU) == expected


def test_argument_beats_environment_which_beats_auto(monkeypatch):
    monkeypatch.setattr(models, "bf16_supported", lambda device: True)
    monkeypatch.setenv("MASHUP_PRECISION", "fp32")
    assert resolve_precision(None, CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_unknown_precision_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("MASHUP_PRECISION", "fp16")
    with pytest.raises(MashupError, match=r"unknown precision 'fp16' in \$MASHUP_PRECISION; use one of"):
        resolve_precision(None, CPU)


def test_forced_bf16_without_bf16_units_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(models, "bf16_supported", lambda device: False)
    models._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="mashup.models"):
        assert resolve_precision("bf16", CPU) == "bf16"
        resolve_precision("bf16", CPU)
    assert len([r for r in caplog.records if "emulates" in r.getMessage()]) == 1


def test_bf16_selection_is_within_bf16_tolerance_of_the_fp32_oracle(tmp_path, tiny_base, tiny_loras, mc_file):
    records = Library(tmp_path / "lib").add(tiny_loras)
    data = DataConfig(data=str(mc_file), scoring="cloze")
    result = select(str(tiny_base), data, SelectConfig(samples=12, k=2, seed=3, batch_size=5), tmp_path / "lib",
                    precision="bf16")
    assert result.precision == "bf16"
    from mashup.data import load_target, sample

    target = load_target(data)
    examples = sample(target.train, 12, 3)
    for score in result.ranking:
        path = next(r.path for r in records if r.id == score.id)
        oracle = _independent_loss(tiny_base, path, examples, target.template, "cloze")
        assert score.loss == pytest.approx(oracle, rel=2e-2)  # bf16 keeps 8 bits of mantissa
        assert score.loss != oracle, "bf16 autocast was not applied"



def test_cached_scores_answer_only_selections_in_their_own_precision(tmp_path, tiny_base, tiny_loras, mc_file):
    """bf16 and fp32 losses round about 1e-3 apart, enough to reorder a near-tie: the precision is part
    of the cache key. fp32 keys are unchanged, so caches written before that stay valid."""
    Library(tmp_path / "lib").add(tiny_loras)
    data = DataConfig(data=str(mc_file), scoring="cloze")
    config = SelectConfig(samples=8, k=2, seed=3, batch_size=4)

    def cached(precision: str) -> tuple[int, int]:
        stats = select(str(tiny_base), data, config, tmp_path / "lib", precision=precision).stats
        return stats["scored"], stats["cached"]

    n = len(tiny_loras)
    assert cached("fp32") == (n, 0)
    assert cached("bf16") == (n, 0), "fp32 scores answered a bf16 selection"
    assert cached("bf16") == (0, n)
    assert cached("fp32") == (0, n)


def test_bf16_training_records_its_precision_and_step_zero_matches_bf16_eval(tmp_path, tiny_base, mc_file,
                                                                              tiny_loras):
    data = DataConfig(data=str(mc_file), **DATA)
    config = TrainConfig(batch_size=8, max_steps=4, eval_every=4, lr=2e-2)
    summary = train_model(str(tiny_base), data, config, tmp_path / "bf16", init=tiny_loras[0],
                          eval_config=EvalConfig(batch_size=4), precision="bf16")
    assert json.loads((tmp_path / "bf16" / "result.json").read_text())["precision"] == "bf16"
    same_path = evaluate_model(str(tiny_base), data, adapter=tiny_loras[0], config=EvalConfig(batch_size=4),
                               precision="bf16")
    assert same_path.precision == "bf16"
    assert summary.result.curve[0].loss == pytest.approx(same_path.loss, abs=1e-6)
    fp32 = evaluate_model(str(tiny_base), data, adapter=tiny_loras[0], config=EvalConfig(batch_size=4),
                          precision="fp32")
    assert summary.result.curve[0].loss == pytest.approx(fp32.loss, rel=2e-2)
    assert summary.result.final.loss < summary.result.curve[0].loss


def test_bf16_attention_on_cuda_leaves_out_the_cudnn_kernel():
    """cuDNN's SDPA backward returns NaN query gradients for padded lengths of 64 mod 128 (torch 2.11,
    H100/H200), so bf16 on CUDA runs attention on the other kernels; CPU and fp32 keep the defaults."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_backends(torch.device("cuda"), bf16=True):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    for device, bf16 in ((torch.device("cuda"), False), (torch.device("cpu"), True)):
        with attention_backends(device, bf16):
            assert torch.backends.cuda.cudnn_sdp_enabled() == before
