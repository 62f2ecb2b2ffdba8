"""LoRA slots built once into the base model: adapters are copied in, several share one forward.

PEFT's ``load_adapter``/``delete_adapter`` rebuilds modules for every candidate, and its mixed-adapter
batches (``adapter_names=``) gather and scatter each adapter's rows with index lists. Selection scores
hundreds of same-shaped adapters on the same batches, so here each targeted ``nn.Linear`` is wrapped
once with G slots of stacked factors, an adapter is a tensor copy into a slot, and the batch's rows
belong to slots in contiguous equal blocks (copy-major, as ``mashup.batching.repeat_rows`` lays them
out), so the G low-rank updates are two batched matmuls per module.

Each slot's factors are views into one flat row, ordered as safetensors orders a one-dtype file (by
name), so loading an adapter is one copy from its memory-mapped file instead of hundreds of small
ones. A first halving round loads every candidate for a few questions each, so on a GPU the loads,
not the forwards, can set its time (SmolLM2 adapter on a 2-core CPU: 1.7 ms against 32 ms).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mashup.io import read_dir_flat
from mashup.library.lora_config import ADAPTER_CONFIG
from mashup.library.records import CheckpointRecord

_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"
# adapter_config.json features that change what the adapter computes beyond base(x) + s * B(A(x))
_UNSUPPORTED_FLAGS = ("fan_in_fan_out", "lora_bias", "use_dora", "alora_invocation_tokens", "layer_replication",
                      "use_qalora", "target_parameters", "arrow_config", "use_bdlora", "modules_to_save",
                      "trainable_token_indices")


@dataclass(frozen=True)
class SlotLayout:
    """Which modules carry LoRA factors, and their rank: what one set of slots can hold."""

    rank: int
    modules: tuple[str, ...]  # module paths in the base model, e.g. model.layers.0.self_attn.q_proj

    @classmethod
    def of(cls, record: CheckpointRecord) -> SlotLayout | None:
        """The layout of a plain LoRA adapter; None when it needs PEFT's own modules (see _UNSUPPORTED_FLAGS)."""
        if record.kind != "lora" or record.lora_r is None or not _plain_config(Path(record.path)):
            return None
        return _layout(record.lora_r, tuple(record.shapes))


@functools.lru_cache(maxsize=64)
def _layout(rank: int, names: tuple[str, ...]) -> SlotLayout | None:
    """The layout of a LoRA state dict's tensor names, or None for a name that is no LoRA factor.

    Cached: a library's adapters of one base share their names, and the engine asks once per load (a
    first halving round loads every candidate): the loop over a SmolLM2 adapter's 420 names took 0.4 ms,
    against 0.02 ms to hash them. Equal layouts are then one object, so comparing them is cheap too.
    """
    modules = []
    for name in names:
        if not name.startswith(_PREFIX) or not name.endswith((_A, _B)):
            return None
        if name.endswith(_A):
            modules.append(name[len(_PREFIX):-len(_A)])
    return SlotLayout(rank, tuple(sorted(modules)))


def _plain_config(adapter_dir: Path) -> bool:
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return False  # let PEFT's loader produce the error message
    return not any(config.get(flag) for flag in _UNSUPPORTED_FLAGS)


def input_features(record: CheckpointRecord, modules: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """(module, in_features) of each module of a plain LoRA adapter, from its A factors' recorded shapes."""
    return tuple((module, record.shapes[_PREFIX + module + _A][1]) for module in modules)


def adapter_factors(tensors: Mapping[str, torch.Tensor], module: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [r, in], B [out, r])`` of one module from a PEFT adapter state dict."""
    return tensors[_PREFIX + module + _A], tensors[_PREFIX + module + _B]


def row_views(rows: torch.Tensor, layout: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Views ``[len(rows), *shape]`` into ``rows`` [N, P] whose tensors lie back to back in ``layout`` order
    (name, shape), as a one-dtype safetensors file stores them."""
    views, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        views[name] = rows[:, offset:offset + size].view(rows.shape[0], *shape)
        offset += size
    return views


class GroupedLoRALinear(nn.Module):
    """``base(x) + s_g * B_g A_g x`` where row block g of the batch belongs to slot ``first`` + g.

    ``lora_A`` [G, r, in], ``lora_B`` [G, out, r] and ``scale`` [G] are given (views into the slots'
    storage), so one copy can fill every module's factors of a slot. ``alpha`` is the active slots'
    common scale, when they share one (``LoRASlots.activate``): then the update and its sum with the
    base output are one ``baddbmm``, where a scale per slot costs a multiply and an add more.
    """

    def __init__(self, base_layer: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: torch.Tensor
                 ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.register_buffer("lora_A", lora_A, persistent=False)
        self.register_buffer("lora_B", lora_B, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.active = 0  # slots in use; 0 leaves the base layer alone
        self.first = 0  # the first slot in use: rows block g belongs to slot first + g
        self.alpha: float | None = None  # the active slots' common scale, if any

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the layer's dtype (the slots'): under autocast the base layer would cast its input, and so would the
        # update's matmuls, each on its own
        x = x.to(self.lora_A.dtype)
        result = self.base_layer(x)
        g, first = self.active, self.first
        if g == 0:
            return result
        if g == 1:  # the same ops as PEFT's LoRA Linear: B(A(x)) * s
            return result + F.linear(F.linear(x, self.lora_A[first]), self.lora_B[first]) * self.scale[first]
        down = torch.bmm(x.reshape(g, -1, x.shape[-1]), self.lora_A[first:first + g].transpose(1, 2))
        up = self.lora_B[first:first + g].transpose(1, 2)
        if self.alpha is None:
            down = (down * self.scale[first:first + g].view(g, 1, 1)).to(down.dtype)
        blocks = result.reshape(g, -1, result.shape[-1])
        return torch.baddbmm(blocks.to(down.dtype), down, up, alpha=1.0 if self.alpha is None else self.alpha
                             ).to(result.dtype).view(result.shape)


class LoRASlots:
    """G slots wrapped once around the layout's modules of ``model`` (in place).

    ``storage`` [G, P] holds every factor of a slot in one row, in the order ``factors`` gives, in
    ``dtype`` (default: the model's). A ``dtype`` other than the model's must be the one autocast runs
    the forwards in: the wrapped layers' weights (untied ones) are cast to it once here, where autocast
    would cast them and every slot's factors again in each forward, a kernel each.
    """

    def __init__(self, model: nn.Module, layout: SlotLayout, slots: int, dtype: torch.dtype | None = None) -> None:
        self.layout = layout
        self.slots = slots
        bases = {path: _linear(model, path) for path in layout.modules}
        weight = next(iter(bases.values())).weight
        cast = dtype is not None and dtype != weight.dtype
        dtype = dtype or weight.dtype
        shapes = {}
        for path, base in bases.items():
            shapes[_PREFIX + path + _A] = (layout.rank, base.in_features)
            shapes[_PREFIX + path + _B] = (base.out_features, layout.rank)
        self.factors = tuple(sorted(shapes.items()))  # the order safetensors writes a one-dtype file in
        self.storage = torch.zeros(slots, sum(r * c for _, (r, c) in self.factors), dtype=dtype, device=weight.device)
        self.scale = torch.zeros(slots, dtype=torch.float32, device=weight.device)
        self._scales = [0.0] * slots  # the same on the host: ``activate`` reads them without a device sync
        self._stage: torch.Tensor | None = None  # see ``load_adapter``
        views = row_views(self.storage, self.factors)
        tied = _tied_parameters(model) if cast else set()
        self.modules: dict[str, GroupedLoRALinear] = {}
        for path, base in bases.items():
            if cast and not any(id(p) in tied for p in base.parameters()):
                base.to(dtype)  # a tied weight stays: its other module computes with it too
            wrapped = GroupedLoRALinear(base, views[_PREFIX + path + _A], views[_PREFIX + path + _B], self.scale)
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path), child, wrapped)
            self.modules[path] = wrapped

    @torch.no_grad()
    def load_adapter(self, slot: int, adapter_dir: Path, scale: float, allow_pickle: bool = False,
                     block: torch.Tensor | None = None) -> bool:
        """Copy an adapter dir's factors into ``slot`` in one copy: ``block`` (its data, already read), else
        its file mapped as one block, else its tensors loaded and joined (``io.read_dir_flat``). False
        (nothing loaded) when its tensors are not exactly the slots' factors."""
        if block is None:
            block = read_dir_flat(adapter_dir, self.factors, allow_pickle=allow_pickle)
        if block is None:
            return False
        if block.device != self.storage.device and block.dtype != self.storage.dtype:
            # a copy to another device that also converts converts first on the source's side: on the host,
            # into pageable memory that the transfer then waits on. So transfer as is, then convert there.
            block = self._staging(block.dtype).copy_(block, non_blocking=block.is_pinned())
        # from pinned memory the transfer is queued behind the forward in flight instead of waiting for it
        self.storage[slot].copy_(block, non_blocking=block.is_pinned())
        self.scale[slot] = scale
        self._scales[slot] = float(scale)
        return True

    def _staging(self, dtype: torch.dtype) -> torch.Tensor:
        """One slot row in ``dtype`` on the slots' device, reused by every load (the copies into and out of it
        run in stream order)."""
        if self._stage is None or self._stage.dtype != dtype:
            self._stage = torch.empty(self.storage.shape[1], dtype=dtype, device=self.storage.device)
        return self._stage

    def activate(self, n: int, first: int = 0) -> None:
        """Use ``n`` slots from slot ``first`` on (0: the plain base model)."""
        common = set(self._scales[first:first + n])
        alpha = common.pop() if len(common) == 1 else None
        for module in self.modules.values():
            module.active, module.first, module.alpha = n, first, alpha


def _tied_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that more than one module holds (tied weights)."""
    seen: set[int] = set()
    tied: set[int] = set()
    for _, parameter in model.named_parameters(remove_duplicate=False):
        (tied if id(parameter) in seen else seen).add(id(parameter))
    return tied


def _linear(model: nn.Module, path: str) -> nn.Linear:
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{path} is a {type(module).__name__}, not nn.Linear")
    return module
