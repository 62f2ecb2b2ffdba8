"""RegMean's fallback to the pseudo-inverse (a Gram sum singular on the seen input features: reached only with
negative weights or regmean_alpha 1) reaches the merge report once per merge, with how many weights took it and one
named, in full and LoRA merges; logged once too, not also by the method. Forced here with negative weights whose
weighted Grams cancel: Σ wᵢGᵢ = 2·G − 1·(2·G) = 0 for the q_proj weights (the others are solved)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mashup.config import MergeConfig
from mashup.merging import MergeParams, api, merge_checkpoints, merge_tensors
from mashup.merging.lora import base_weight_name
from mashup.merging.plan import MergePlan
from mashup.merging.registry import get_merge_method
from tests.merging.helpers import records

SINGULAR = "Gram sum was singular"
WEIGHTS = [2.0, -1.0]


def _gram(width: int, seed: int) -> torch.Tensor:
    x = torch.randn(3 * width, width, generator=torch.Generator().manual_seed(seed))
    return x.T @ x


def _grams(widths: dict[str, int]) -> list[dict[str, torch.Tensor]]:
    """Two checkpoints' Grams: the second's q_proj Grams twice the first's (so WEIGHTS cancel them), others apart."""
    first = {name: _gram(width, seed) for seed, (name, width) in enumerate(sorted(widths.items()))}
    second = {name: 2 * g if "q_proj" in name else _gram(widths[name], 100 + i)
              for i, (name, g) in enumerate(sorted(first.items()))}
    return [first, second]


def _fake_statistics(plan: MergePlan, base_model_dir: Path | None, batches) -> list[dict[str, torch.Tensor]]:
    """In place of ``compute_statistics``: Grams for the adapted weights (LoRA) or the q/k_proj weights (full)."""
    if plan.kind == "lora":
        return _grams({base_weight_name(module): width for module, (_, width) in plan.modules.items()})
    return _grams({name: shape[1] for name, shape in plan.records[0].shapes.items()
                   if name.endswith(("q_proj.weight", "k_proj.weight"))})


@pytest.fixture()
def faked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "compute_statistics", _fake_statistics)


def _singular_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if SINGULAR in r.getMessage()]


def _regmean(checkpoints: list[Path], base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The report of a RegMean merge of the first two ``checkpoints`` at ``WEIGHTS``, its warnings captured."""
    with caplog.at_level(logging.WARNING):
        return merge_checkpoints(records(checkpoints[:2], base), MergeConfig(method="regmean", weights=WEIGHTS),
                                 tmp_path / "out", base_model_dir=base)


@pytest.mark.usefixtures("faked")
def test_a_full_regmean_reports_its_singular_solves_once_with_a_count_and_a_name(
        tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    report = _regmean(tiny_fulls, tiny_base, tmp_path, caplog)
    expected = ("RegMean's Gram sum was singular on the seen input features of 2 weights (e.g. "
                "model.layers.0.self_attn.q_proj.weight), which took the pseudo-inverse's least-norm solution; "
                "with non-negative weights (and regmean_alpha < 1) it cannot be")
    assert [w for w in report.warnings if SINGULAR in w] == [expected]  # the 2 layers' q_proj, not k_proj
    assert _singular_said(caplog) == [expected]
    assert expected in json.loads((tmp_path / "out" / api.REPORT_NAME).read_text())["warnings"]


@pytest.mark.usefixtures("faked")
def test_a_lora_regmean_reports_its_singular_solves_once_naming_a_module(
        tiny_base: Path, tiny_loras: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    report = _regmean(tiny_loras, tiny_base, tmp_path, caplog)
    said = [w for w in report.warnings if SINGULAR in w]
    assert len(said) == 1 and _singular_said(caplog) == said
    assert said[0].startswith("RegMean's Gram sum was singular on the seen input features of 2 adapted modules' ΔW "
                              "(e.g. base_model.model.model.layers.0.self_attn.q_proj)")


@pytest.mark.usefixtures("faked")
def test_a_regmean_merge_with_every_solve_exact_reports_nothing_singular(
        tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    report = merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(method="regmean"), tmp_path / "out",
                               base_model_dir=tiny_base)
    assert not [w for w in report.warnings if SINGULAR in w]


def test_the_method_counts_its_fallbacks_and_a_quiet_one_logs_none(caplog: pytest.LogCaptureFixture) -> None:
    gram = _gram(4, 0)
    tensors = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    method = get_merge_method("regmean")
    method.quiet = True
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            merge_tensors(method, tensors, WEIGHTS, None, MergeParams(statistics=[gram, 2 * gram]))
        merge_tensors(method, tensors, [1.0, 1.0], None, MergeParams(statistics=[gram, 2 * gram]))
    assert method.singular == 3 and caplog.records == []
