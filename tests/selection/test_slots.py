"""LoRA slots load an adapter as one block when its file is laid out as a slot row, else loaded and joined."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mashup.errors import CheckpointError
from mashup.io import load_weight_dir, read_tensor_block
from mashup.library.lora_config import ADAPTER_CONFIG
from mashup.models import load_model
from mashup.selection.slots import LoRASlots, SlotLayout, adapter_factors
from tests.selection.helpers import records_for

WEIGHTS = "adapter_model.safetensors"


def _variant(source, out, tensors) -> object:
    """An adapter dir with ``source``'s config and the given tensors."""
    out.mkdir()
    shutil.copy(source / ADAPTER_CONFIG, out / ADAPTER_CONFIG)
    save_file(tensors, str(out / WEIGHTS))
    return out


def _slots(tiny_base, adapter) -> LoRASlots:
    return LoRASlots(load_model(tiny_base), SlotLayout.of(records_for([adapter])[0]), slots=2)


def _row_tensor_by_tensor(tiny_base, adapter) -> torch.Tensor:
    """Slot 1's storage row filled through each module's views, tensor by tensor: the reference."""
    slots = _slots(tiny_base, adapter)
    tensors = load_weight_dir(adapter)
    for path, module in slots.modules.items():
        a, b = adapter_factors(tensors, path)
        module.lora_A[1].copy_(a)
        module.lora_B[1].copy_(b)
    return slots.storage[1]


def test_a_safetensors_file_reads_as_one_block_in_name_order(tiny_loras):
    tensors = load_weight_dir(tiny_loras[0])
    expected = [(name, tuple(t.shape)) for name, t in sorted(tensors.items())]
    block = read_tensor_block(tiny_loras[0] / WEIGHTS, expected)
    assert block is not None and block.dtype == torch.float32
    assert torch.equal(block, torch.cat([tensors[name].flatten() for name, _ in expected]))
    assert read_tensor_block(tiny_loras[0] / WEIGHTS, expected[1:]) is None  # another set of tensors
    assert read_tensor_block(tiny_loras[0] / WEIGHTS, expected[::-1]) is None  # another order


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_dtype_files_load_as_one_block_and_equal_the_per_tensor_path(tiny_base, tiny_loras, tmp_path, dtype):
    source = tiny_loras[1]
    adapter = _variant(source, tmp_path / "half", {k: v.to(dtype) for k, v in load_weight_dir(source).items()})
    slots = _slots(tiny_base, adapter)
    assert read_tensor_block(adapter / WEIGHTS, slots.factors) is not None
    assert slots.load_adapter(1, adapter, 2.0)
    assert torch.equal(slots.storage[1], _row_tensor_by_tensor(tiny_base, adapter))
    assert slots.scale[1] == 2.0 and slots.storage[0].abs().sum() == 0  # the other slot is untouched


def test_mixed_dtype_files_load_joined(tiny_base, tiny_loras, tmp_path):
    tensors = load_weight_dir(tiny_loras[2])
    first = sorted(tensors)[0]
    adapter = _variant(tiny_loras[2], tmp_path / "mixed", {**tensors, first: tensors[first].to(torch.float16)})
    slots = _slots(tiny_base, adapter)
    assert read_tensor_block(adapter / WEIGHTS, slots.factors) is None
    assert slots.load_adapter(0, adapter, 2.0)
    assert torch.equal(slots.storage[0], _row_tensor_by_tensor(tiny_base, adapter))
    assert slots.storage[0].abs().sum() > 0


def test_unreadable_files_fall_back_to_the_loader_and_its_error(tiny_base, tiny_loras, tmp_path):
    slots = _slots(tiny_base, tiny_loras[0])
    truncated = _variant(tiny_loras[0], tmp_path / "truncated", load_weight_dir(tiny_loras[0]))
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[:-100])
    assert read_tensor_block(truncated / WEIGHTS, slots.factors) is None
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        slots.load_adapter(0, truncated, 2.0)
    (truncated / WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00[1, 2, 3, 4, 5, 6]")  # a header, not a dict
    assert read_tensor_block(truncated / WEIGHTS, slots.factors) is None
    (truncated / WEIGHTS).write_bytes(b"\xff" * 8)  # a header length past any file
    assert read_tensor_block(truncated / WEIGHTS, slots.factors) is None


def test_an_adapter_of_another_shape_does_not_fit(tiny_base, tiny_loras, tmp_path):
    slots = _slots(tiny_base, tiny_loras[0])
    wider = {k: torch.cat([v, v], dim=0 if "lora_A" in k else 1) for k, v in load_weight_dir(tiny_loras[0]).items()}
    adapter = _variant(tiny_loras[0], tmp_path / "wider", wider)
    assert not slots.load_adapter(0, adapter, 2.0)
    tensors = sorted(load_weight_dir(tiny_loras[0]).items())
    fewer = _variant(tiny_loras[0], tmp_path / "fewer", dict(tensors[1:]))  # a factor missing
    assert not slots.load_adapter(0, fewer, 2.0)
    assert slots.storage.abs().sum() == 0


def test_adapters_with_the_same_names_share_one_layout_and_other_names_have_none(tiny_loras, tmp_path):
    first, second = records_for(tiny_loras[:2])
    layout = SlotLayout.of(first)
    assert layout is SlotLayout.of(second)  # one parse of the names for a library of one base
    assert layout.rank == first.lora_r and all(m.startswith("model.layers.") for m in layout.modules)
    assert len(layout.modules) * 2 == len(first.shapes)
    tensors = load_weight_dir(tiny_loras[0])
    tensors["base_model.model.lm_head.weight"] = torch.zeros(2, 2)  # a full tensor beside the factors
    (other,) = records_for([_variant(tiny_loras[0], tmp_path / "with-head", tensors)])
    assert SlotLayout.of(other) is None


def _three_linears() -> torch.nn.Module:
    model = torch.nn.Module()
    model.a, model.b, model.c = (torch.nn.Linear(6, 5, bias=False) for _ in range(3))
    model.b.weight = model.a.weight  # tied, as a head to its embeddings
    return model


@pytest.mark.parametrize("scales", [(2.0, 2.0, 2.0), (0.5, 2.0, 3.0)])
def test_grouped_rows_get_their_own_slots_update(scales):
    """Row block g gets base(x) + s_g B_g A_g x: one fused matmul for a common scale, a scale per slot else."""
    torch.manual_seed(0)
    model = _three_linears()
    base = torch.nn.Linear(6, 5, bias=False).requires_grad_(False)
    base.load_state_dict(model.c.state_dict())
    slots = LoRASlots(model, SlotLayout(2, ("c",)), slots=4)
    factors = torch.randn(4, slots.storage.shape[1])
    for slot, scale in enumerate(scales):  # a block given is what gets loaded: the dir is not read
        assert slots.load_adapter(slot, Path("not-read"), scale, block=factors[slot])
    slots.activate(len(scales))
    assert slots.modules["c"].alpha == (2.0 if len(set(scales)) == 1 else None)
    x = torch.randn(len(scales) * 2, 7, 6)
    with torch.no_grad():
        got = model.c(x)
    module = slots.modules["c"]
    for g, scale in enumerate(scales):
        rows = x[2 * g:2 * g + 2]
        expected = base(rows) + scale * rows @ module.lora_A[g].T @ module.lora_B[g].T
        assert torch.allclose(got[2 * g:2 * g + 2], expected, atol=1e-5)
    slots.activate(0)
    assert torch.equal(model.c(x), base(x))


def test_slots_in_the_autocast_dtype_cast_the_layers_they_wrap_unless_tied():
    model = _three_linears()
    slots = LoRASlots(model, SlotLayout(2, ("a", "c")), slots=2, dtype=torch.bfloat16)
    assert slots.storage.dtype == torch.bfloat16 and slots.scale.dtype == torch.float32
    assert slots.modules["c"].base_layer.weight.dtype == torch.bfloat16
    assert model.a.base_layer.weight.dtype == model.b.weight.dtype == torch.float32  # tied: b computes with it
    x = torch.randn(2, 3, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.c(x).dtype == model.a(x).dtype == torch.bfloat16
