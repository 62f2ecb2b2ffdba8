"""Attaching an adapter with PEFT's lora_bias to a base whose layers have no bias: PEFT warns that merging it will
not be possible, which is no concern of a plain attach (eval, train, select add the bias in the forward)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from mashup.models import attach_adapter, load_model
from tests.merging.helpers import save_bias_lora


@pytest.mark.parametrize("trainable", [False, True])
def test_a_lora_bias_adapter_attaches_without_pefts_merge_warning_and_adds_its_bias(tiny_base: Path, tmp_path: Path,
                                                                                    trainable: bool) -> None:
    adapter = save_bias_lora(tiny_base, tmp_path / "bias", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = attach_adapter(load_model(tiny_base), adapter, trainable=trainable)
    assert not [w for w in caught if "lora_bias=True" in str(w.message)]
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q_proj.get_base_layer().bias is None and q_proj.lora_B["default"].bias is not None
    h = torch.randn(2, q_proj.in_features)
    with torch.no_grad():
        lora = q_proj.lora_B["default"](q_proj.lora_A["default"](h)) * q_proj.scaling["default"]
        assert torch.allclose(q_proj(h), q_proj.get_base_layer()(h) + lora, atol=1e-6)
