"""LoRA factors of several adapters, stacked per module: what the prefilter's signals compute on.

``StackedFactors`` maps each module path to ``(A [C, r, in], B [C, out, r])`` in float32 for C adapters of
one layout. ``FactorReader`` builds it as views into one ``[C, P]`` tensor on the signals' device: each
adapter's file is read and copied there once, as one block where it is laid out as one (see
``mashup.io.read_tensor_block``). Stacking module by module instead read every file once per module and
copied each module's factors to the device on their own (420 copies per chunk of SmolLM2 adapters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mashup.errors import CheckpointError
from mashup.io import read_dir_flat, sorted_shapes
from mashup.library import CheckpointRecord
from mashup.selection.read_ahead import AdapterReadAhead, default_read_ahead
from mashup.selection.slots import adapter_factors, row_views

StackedFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def stack_factors(adapters: Sequence[Mapping[str, torch.Tensor]], modules: Sequence[str]) -> StackedFactors:
    """The factors of loaded state dicts (any float dtypes), stacked per module in float32."""
    stacked = {}
    for module in modules:
        pairs = [adapter_factors(tensors, module) for tensors in adapters]
        stacked[module] = (torch.stack([a.float() for a, _ in pairs]), torch.stack([b.float() for _, b in pairs]))
    return stacked


class FactorReader:
    """Reads chunks of adapters' factors into one float32 ``[C, P]`` tensor on ``device``, reused from chunk
    to chunk: a fresh 313 MB tensor per chunk of 32 SmolLM2 adapters cost 4.6 ms an adapter in page faults
    on a 2-core CPU, against 0.7 ms to fill the same one again. The factors of one ``read`` are views into
    it, valid until the next. Files announced with ``prefetch`` are read on threads meanwhile (by default
    on CUDA only, see ``mashup.selection.read_ahead``)."""

    def __init__(self, device: torch.device, allow_pickle: bool = False, read_ahead: bool | None = None) -> None:
        self.device = device
        self.allow_pickle = allow_pickle
        self.read_ahead = default_read_ahead(device) if read_ahead is None else read_ahead
        self._rows: torch.Tensor | None = None
        self._layouts: dict[LayoutKey, tuple[tuple[str, tuple[int, ...]], ...]] = {}
        self._readers: dict[LayoutKey, AdapterReadAhead] = {}

    def prefetch(self, records: Sequence[CheckpointRecord]) -> None:
        """Start reading these records' files, in this order, for later ``read`` calls."""
        if not self.read_ahead:
            return
        by_layout: dict[LayoutKey, list[CheckpointRecord]] = {}
        for record in records:
            by_layout.setdefault(_layout_key(record), []).append(record)
        for key, group in by_layout.items():
            if key not in self._readers:
                self._readers[key] = AdapterReadAhead(self._expected(group[0]), self.device,
                                                      allow_pickle=self.allow_pickle)
            self._readers[key].request(Path(r.path) for r in group)

    def read(self, records: Sequence[CheckpointRecord], modules: Sequence[str]) -> StackedFactors:
        """The records' factors (one rank and layout, as the catalog recorded their shapes)."""
        expected = self._expected(records[0])
        width = sum(math.prod(shape) for _, shape in expected)
        if self._rows is None or self._rows.shape[0] < len(records) or self._rows.shape[1] != width:
            self._rows = torch.empty(len(records), width, dtype=torch.float32, device=self.device)
        rows = self._rows[:len(records)]
        reader = self._readers.get(_layout_key(records[0]))
        for row, record in zip(rows, records):
            block = reader.take(Path(record.path)) if reader is not None else None
            if block is None:
                block = _flat_row(record, expected, self.allow_pickle)
            row.copy_(block, non_blocking=block.is_pinned())  # to float32 (and the device) as it copies
        views = row_views(rows, expected)
        return {module: adapter_factors(views, module) for module in modules}

    def _expected(self, record: CheckpointRecord) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Name and shape of each tensor in a one-block file's order (sorted once per layout)."""
        key = _layout_key(record)
        if key not in self._layouts:
            self._layouts[key] = sorted_shapes(record.shapes)
        return self._layouts[key]


LayoutKey = tuple[int | None, tuple[str, ...]]


def _layout_key(record: CheckpointRecord) -> LayoutKey:
    """Rank and tensor names: adapters of one base that share them share every shape."""
    return record.lora_r, tuple(record.shapes)


def factor_count(record: CheckpointRecord) -> int:
    """Numbers in one adapter's factors (what a ``FactorReader`` holds per adapter, as float32)."""
    return sum(math.prod(shape) for shape in record.shapes.values())


def _flat_row(record: CheckpointRecord, expected: Sequence[tuple[str, tuple[int, ...]]],
              allow_pickle: bool) -> torch.Tensor:
    """The adapter's tensors back to back in ``expected`` order: its mapped file, else loaded and joined."""
    path = Path(record.path)
    flat = read_dir_flat(path, expected, allow_pickle=allow_pickle)
    if flat is None:
        raise CheckpointError("its tensors differ from what the library recorded (changed on disk?)", str(path),
                              f"register it again: mashup library add {path}")
    return flat
