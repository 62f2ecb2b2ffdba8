"""Adapter files read ahead on threads while the forwards run: the same scores, in a selection too."""

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mashup.config import SelectConfig
from mashup.errors import CheckpointError
from mashup.executors import LocalExecutor
from mashup.io import load_weight_dir, read_dir_block, read_dir_block_into
from mashup.library.base_shapes import BaseShapes
from mashup.library.lora_config import ADAPTER_CONFIG
from mashup.library.records import inspect_checkpoint
from mashup.models import load_model
from mashup.selection import engine as engine_module
from mashup.selection import read_ahead as read_ahead_module
from mashup.selection import select_checkpoints
from mashup.selection.engine import ScoringEngine
from mashup.selection.read_ahead import AdapterReadAhead
from mashup.selection.slots import LoRASlots, SlotLayout
from tests.selection.helpers import records_for, requests_for
from tests.tiny import save_tiny_lora


def _factors(tiny_base, adapter):
    return LoRASlots(load_model(tiny_base), SlotLayout.of(records_for([adapter])[0]), slots=1).factors


def _copies(adapters, root):
    """Copies of the adapter dirs, which a test may delete."""
    return [shutil.copytree(a, root / f"copy{i}") for i, a in enumerate(adapters)]


def test_reads_land_before_they_are_taken_in_the_files_layout(tiny_base, tiny_loras, tmp_path):
    adapters = _copies(tiny_loras, tmp_path)
    expected = [read_dir_block(a, _factors(tiny_base, a)).clone() for a in adapters]
    reader = AdapterReadAhead(_factors(tiny_base, adapters[0]), torch.device("cpu"))
    reader.request(adapters)
    reader.request(adapters[:1])  # already queued: ignored
    assert reader.queued == len(adapters)
    for future in list(reader._reads.values()):
        future.result()
    for adapter in adapters:  # read already: the files may go
        shutil.rmtree(adapter)
    for adapter, block in zip(adapters, expected):
        got = reader.take(adapter)
        assert got is not None and torch.equal(got, block)
    assert reader.queued == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_block_read_into_new_memory_equals_the_mapped_block(tiny_base, tiny_loras, tmp_path, dtype):
    adapter = _copies(tiny_loras[:1], tmp_path)[0]
    file = adapter / "adapter_model.safetensors"
    save_file({k: v.to(dtype) for k, v in load_weight_dir(adapter).items()}, str(file))
    factors = _factors(tiny_base, adapter)
    made = []

    def allocate(dtype, numel):
        made.append((dtype, numel))
        return torch.empty(numel, dtype=dtype)

    block = read_dir_block_into(adapter, factors, allocate)
    assert block.dtype == dtype and torch.equal(block, read_dir_block(adapter, factors))
    assert made == [(dtype, block.numel())] and block.numel() == sum(math.prod(shape) for _, shape in factors)
    assert read_dir_block_into(adapter, factors[1:], allocate) is None  # not the slots' tensors
    file.write_bytes(file.read_bytes()[:-2])  # cut short
    assert read_dir_block_into(adapter, factors, allocate) is None and read_dir_block(adapter, factors) is None


def test_reads_stay_within_the_budget_and_unrequested_or_other_files_read_on_take(tiny_base, tiny_loras, tmp_path):
    factors = _factors(tiny_base, tiny_loras[0])
    reader = AdapterReadAhead(factors, torch.device("cpu"), budget_bytes=1)  # below one adapter: one at a time
    reader.request(tiny_loras)
    assert len(reader._reads) == 1 and reader.queued == 3
    assert torch.equal(reader.take(tiny_loras[1]), read_dir_block(tiny_loras[1], factors))  # out of order
    assert reader.queued == 2
    for adapter in (tiny_loras[0], tiny_loras[2]):
        assert torch.equal(reader.take(adapter), read_dir_block(adapter, factors))
    assert torch.equal(reader.take(tiny_loras[0]), read_dir_block(tiny_loras[0], factors))  # never requested
    tensors = load_weight_dir(tiny_loras[0])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tiny_loras[0] / ADAPTER_CONFIG, mixed / ADAPTER_CONFIG)
    first = sorted(tensors)[0]
    save_file({**tensors, first: tensors[first].half()}, str(mixed / "adapter_model.safetensors"))
    reader.request([mixed])
    assert reader.take(mixed) is None  # no one-block file: the slots load its tensors and join them


@pytest.mark.parametrize("chunk_rows", [1, 64])  # kept in one block per copy, or all in one
def test_kept_blocks_are_taken_again_without_reading_within_their_budget(tiny_base, tiny_loras, tmp_path, monkeypatch,
                                                                         chunk_rows):
    monkeypatch.setattr(read_ahead_module, "KEEP_CHUNK_ROWS", chunk_rows)
    adapters = _copies(tiny_loras, tmp_path)
    factors = _factors(tiny_base, adapters[0])
    blocks = [read_dir_block(a, factors).clone() for a in adapters]
    reader = AdapterReadAhead(factors, torch.device("cpu"), keep_bytes=2 * blocks[0].numel() * blocks[0].element_size())
    for adapter, block in zip(adapters, blocks):
        reader.keep(adapter, block)
    block.zero_()  # the reader kept a copy, not the caller's tensor
    for adapter in adapters:
        shutil.rmtree(adapter)
    reader.request(adapters[:2])  # kept: nothing to read
    assert reader.queued == 0
    for adapter, want in zip(adapters[:2], blocks):
        assert torch.equal(reader.take(adapter), want) and torch.equal(reader.take(adapter), want)
    with pytest.raises(CheckpointError, match="no weight files"):  # past the budget: not kept, so read
        reader.take(adapters[2])


def test_engine_keeping_blocks_scores_later_rounds_without_the_files(tiny_base, tiny_loras, mc_file, tmp_path,
                                                                     monkeypatch):
    workspace, requests = requests_for(tiny_base, mc_file, 9, "cloze")
    records = records_for(_copies(tiny_loras, tmp_path))
    settings = workspace.settings(3)
    plain = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2)
    want = [plain.score(records, range(4)), plain.score(records, range(4, 9))]
    monkeypatch.setattr(engine_module, "device_keep_bytes", lambda device: 1 << 30)  # as on a GPU with room
    engine = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2, read_ahead=True)
    first = engine.score(records, range(4))  # a first round: every adapter loaded once
    for record in records:
        shutil.rmtree(record.path)
    rest = engine.score(records, range(4, 9))  # a later round: from the kept blocks
    assert [[s.losses for s in scores] for scores in (first, rest)] == [[s.losses for s in w] for w in want]


def test_engine_reading_ahead_scores_as_without(tiny_base, tiny_loras, mc_file, tmp_path):
    workspace, requests = requests_for(tiny_base, mc_file, 9, "cloze")
    other_rank = save_tiny_lora(tiny_base, tmp_path / "r2", seed=7, r=2)  # another layout: through PEFT
    records = records_for([*tiny_loras, other_rank, *tiny_loras[:2]])
    settings = workspace.settings(3)
    plain = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2)
    assert not plain.read_ahead  # off on a CPU by default
    ahead = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2, read_ahead=True)
    ahead.prefetch([*records[4:], records[3]], (0, 1))  # a later call's adapters, queued first
    assert ahead._reader is not None and ahead._reader.queued == 2  # the r=2 adapter goes through PEFT
    assert ahead._slot_model is None  # the base loads at the first score, while those reads run
    for indices in [(0, 1), None]:
        want, got = plain.score(records, indices), ahead.score(records, indices)
        assert [g.losses for g in got] == [w.losses for w in want]
        assert ahead._reader.queued == 0


def test_an_adapter_that_does_not_fit_the_base_fails_as_without_reading_ahead(tiny_base, tiny_loras, mc_file,
                                                                            tmp_path):
    """Reads start from the catalog's shapes before the base loads; when those do not fit the base (registration
    refuses such an adapter where its base is on disk, so one could be registered only with its base elsewhere),
    the adapter must still reach PEFT's loader and its message, not a failed copy into a slot."""
    workspace, requests = requests_for(tiny_base, mc_file, 6, "cloze")
    misfit = shutil.copytree(tiny_loras[0], tmp_path / "misfit")
    tensors = load_weight_dir(misfit)
    name = sorted(n for n in tensors if ".lora_A." in n)[0]
    tensors[name] = torch.cat([tensors[name], tensors[name][:, :1]], dim=1)  # one input more than the base has
    save_file(tensors, str(misfit / "adapter_model.safetensors"))
    record = inspect_checkpoint(misfit, base_shapes=BaseShapes(lambda base: None, lambda base: None))  # no base
    record.id = record.sha256[:12]
    for read_ahead in (False, True):
        engine = ScoringEngine(tiny_base, requests, workspace.settings(3), adapters_per_forward=2,
                               read_ahead=read_ahead)
        with pytest.raises(CheckpointError, match="trained on this base model"):
            engine.score([record])


class RecordingWorker:
    def __init__(self, log):
        self.log = log

    def __call__(self, unit):
        self.log.append(("run", unit))
        return unit

    def prefetch(self, unit):
        self.log.append(("prefetch", unit))


def test_the_local_executor_hints_each_unit_and_the_next_before_running_it():
    log = []
    assert LocalExecutor().map(lambda: RecordingWorker(log), [0, 1, 2]) == [0, 1, 2]
    assert log == [("prefetch", 0), ("prefetch", 1), ("run", 0),
                   ("prefetch", 1), ("prefetch", 2), ("run", 1), ("run", 2)]


def test_a_selection_reading_ahead_ranks_and_scores_as_without(tiny_base, tiny_loras, mc_file, tmp_path):
    workspace, requests = requests_for(tiny_base, mc_file, 12, "cloze")
    extra = [save_tiny_lora(tiny_base, tmp_path / f"x{i}", seed=20 + i) for i in range(3)]
    records = records_for([*tiny_loras, *extra])
    runs = []
    for read_ahead in (False, True):
        config = SelectConfig(samples=12, batch_size=4, cache=False, selector="halving", adapters_per_forward=2,
                              read_ahead=read_ahead)
        runs.append(select_checkpoints(workspace, records, requests, config, None).ranking)
    assert [(s.id, s.loss, s.n) for s in runs[0]] == [(s.id, s.loss, s.n) for s in runs[1]]


def test_the_read_benchmark_reads_every_adapter_in_the_slots_layout(tiny_base, tiny_loras, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from read_ahead import main, storage_factors  # benchmarks/read_ahead.py

    adapters = _copies(tiny_loras, tmp_path)
    factors = _factors(tiny_base, adapters[0])
    assert storage_factors(adapters[0]) == factors
    result = main(["--adapters", str(tmp_path), "--threads", "1,2", "--device", "cpu",
                   "--scoring-copies", str(tmp_path.parent / f"{tmp_path.name}-copies")])
    assert result["adapters"] == len(adapters) and set(result["threads"]) == set(result["copies"]) == {1, 2}
    assert result["bytes_each"] == 4 * sum(math.prod(shape) for _, shape in factors)  # float32 files
    assert all(row["bytes_each"] == result["bytes_each"] / 2 for row in result["copies"].values())  # bf16 copies
