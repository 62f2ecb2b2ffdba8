"""bf16 copies of float32 adapters for scoring in bf16: the same values, kept apart from the library's files."""

import logging
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

from mashup.config import SelectConfig
from mashup.io import read_dir_block
from mashup.models import load_model
from mashup.selection import read_ahead as read_ahead_module
from mashup.selection import scoring_copies
from mashup.selection import select_checkpoints
from mashup.selection.engine import ScoringEngine
from mashup.selection.scoring_copies import SCORING_COPIES_DIR, ScoringCopies
from mashup.selection.slots import LoRASlots, SlotLayout
from tests.selection.helpers import records_for, requests_for, wait_for_copy_writers


def _factors(tiny_base, adapter):
    return LoRASlots(load_model(tiny_base), SlotLayout.of(records_for([adapter])[0]), slots=1).factors


def _empty(dtype, numel):
    return torch.empty(numel, dtype=dtype)


def test_a_copy_holds_the_block_rounded_and_a_changed_file_gets_another(tiny_base, tiny_loras, tmp_path):
    adapter = shutil.copytree(tiny_loras[0], tmp_path / "adapter")
    factors = _factors(tiny_base, adapter)
    copies = ScoringCopies(tmp_path / "copies")
    copy = copies.path_for(adapter)
    assert copies.read(copy, factors, _empty) is None  # not made yet
    block = read_dir_block(adapter, factors)
    assert block.dtype == torch.float32
    copies.write(copy, block, factors)
    got = copies.read(copy, factors, _empty)
    assert got.dtype == torch.bfloat16 and torch.equal(got, block.to(torch.bfloat16))
    assert load_file(copy).keys() == {name for name, _ in factors}  # a plain safetensors file
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temp file left
    whole = copy.read_bytes()
    copy.write_bytes(whole[:-2])  # cut short (say, a full disk): no copy, so the file is read and copied again
    assert copies.read(copy, factors, _empty) is None
    copy.write_bytes(whole)
    file = adapter / "adapter_model.safetensors"
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the file changed: another copy
    assert copies.path_for(adapter) != copy
    copies.write(copies.path_for(adapter), got, factors)  # already bf16: nothing smaller to write
    assert not copies.path_for(adapter).exists()
    named = copies.path_for(adapter)
    time.sleep(0.01)
    file.write_bytes((tiny_loras[1] / "adapter_model.safetensors").read_bytes())  # another adapter, same size,
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # its mtime set back, as `cp -p` might
    assert copies.path_for(adapter) != named  # the change time still tells


def test_no_copy_is_written_onto_a_nearly_full_disk(tiny_base, tiny_loras, tmp_path, monkeypatch, caplog):
    factors = _factors(tiny_base, tiny_loras[0])
    block = read_dir_block(tiny_loras[0], factors)
    copies = ScoringCopies(tmp_path / "copies")
    total = 100 << 30
    monkeypatch.setattr(scoring_copies.shutil, "disk_usage", lambda path: SimpleNamespace(total=total, free=5 << 30))
    with caplog.at_level(logging.WARNING, logger="mashup.selection.scoring_copies"):
        for adapter in tiny_loras:
            copies.write(copies.path_for(adapter), block, factors)  # 5 GiB free of 100: under 5% once written
    assert list((tmp_path / "copies").iterdir()) == []
    assert len([r for r in caplog.records if "nearly full" in r.message]) == 1


def test_a_copy_is_queued_only_while_the_writer_keeps_up(tiny_base, tiny_loras, tmp_path, monkeypatch):
    factors = _factors(tiny_base, tiny_loras[0])
    block = read_dir_block(tiny_loras[0], factors).clone()
    copies = ScoringCopies(tmp_path / "copies")
    started, release = threading.Event(), threading.Event()
    write = copies.write

    def slow_write(*args):
        started.set()
        release.wait(30)
        write(*args)

    monkeypatch.setattr(copies, "write", slow_write)
    monkeypatch.setattr(scoring_copies, "WRITE_QUEUE_BYTES", 2 * block.numel() * block.element_size())
    paths = [tmp_path / f"copy{i}.bfloat16.safetensors" for i in range(4)]
    copies.submit(paths[0], block, factors)
    assert started.wait(30)  # the first is being written, and still counts against the queue
    for path in paths[1:]:
        copies.submit(path, block, factors)
    assert copies.skipped == 2  # room for two blocks: the third and fourth go on without a copy
    release.set()
    copies.flush()
    assert [p.exists() for p in paths] == [True, True, False, False]
    copies.submit(paths[3], block, factors)  # the writer caught up: queued again
    copies.flush()
    assert paths[3].exists() and copies.skipped == 2


def test_stale_temp_files_go_and_fresh_ones_stay(tmp_path):
    stale, fresh = tmp_path / "a.bfloat16.safetensors.tmp-1-2", tmp_path / "b.bfloat16.safetensors.tmp-3-4"
    for temp in (stale, fresh):
        temp.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    ScoringCopies(tmp_path)
    assert not stale.exists() and fresh.exists()


def test_engine_reading_bf16_copies_scores_as_without(tiny_base, tiny_loras, mc_file, tmp_path, monkeypatch, caplog):
    workspace, requests = requests_for(tiny_base, mc_file, 6, "cloze")
    records = records_for([shutil.copytree(a, tmp_path / f"a{i}") for i, a in enumerate(tiny_loras)])
    settings = replace(workspace.settings(3), bf16=True)
    want = [s.losses for s in ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2).score(records)]
    copies_dir = tmp_path / "copies"
    first = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2, read_ahead=True,
                          copies_dir=copies_dir)
    with caplog.at_level(logging.INFO, logger="mashup.selection.scoring_copies"):
        assert [s.losses for s in first.score(records)] == want  # read the float32 files, queued their copies
        first._scoring_copies.flush()
    assert len(list(copies_dir.glob("*.bfloat16.safetensors"))) == len(records)
    assert [r.message for r in caplog.records] == [f"keeping bfloat16 copies of float32 adapters for scoring under "
                                                   f"{copies_dir}"]  # said once, not once a copy

    def no_source_reads(*args, **kwargs):
        raise AssertionError("read an adapter's own file although its copy was there")

    monkeypatch.setattr(read_ahead_module, "read_file_block_into", no_source_reads)
    again = ScoringEngine(tiny_base, requests, settings, adapters_per_forward=2, read_ahead=True,
                          copies_dir=copies_dir)
    assert [s.losses for s in again.score(records)] == want


def test_no_copies_in_float32_nor_where_the_dir_cannot_be_written(tiny_base, tiny_loras, mc_file, tmp_path, caplog):
    workspace, requests = requests_for(tiny_base, mc_file, 6, "cloze")
    records = records_for(tiny_loras)
    fp32 = replace(workspace.settings(3), bf16=False)
    engine = ScoringEngine(tiny_base, requests, fp32, adapters_per_forward=2, read_ahead=True,
                           copies_dir=tmp_path / "copies")
    engine.score(records)
    assert not (tmp_path / "copies").exists()  # float32 slots: a bf16 copy would change the scores
    bf16 = replace(fp32, bf16=True)
    want = [s.losses for s in ScoringEngine(tiny_base, requests, bf16, adapters_per_forward=2).score(records)]
    blocked = tmp_path / "a-file"
    blocked.write_text("not a dir")
    engine = ScoringEngine(tiny_base, requests, bf16, adapters_per_forward=2, read_ahead=True, copies_dir=blocked)
    with caplog.at_level(logging.WARNING, logger="mashup.selection.scoring_copies"):
        assert [s.losses for s in engine.score(records)] == want
        engine._scoring_copies.flush()
    assert len([r for r in caplog.records if "cannot write scoring copies" in r.message]) == 1


def test_a_selection_keeps_its_copies_under_the_library_dir_unless_turned_off(tiny_base, tiny_loras, mc_file,
                                                                              tmp_path, monkeypatch):
    monkeypatch.setenv("MASHUP_PRECISION", "bf16")
    workspace, requests = requests_for(tiny_base, mc_file, 8, "cloze")
    records = records_for(tiny_loras)
    rankings = []
    for on, library in ((False, tmp_path / "off"), (True, tmp_path / "on")):
        config = SelectConfig(samples=8, batch_size=4, cache=False, selector="halving", adapters_per_forward=2,
                              read_ahead=True, scoring_copies=on)
        rankings.append([(s.id, s.loss) for s in select_checkpoints(workspace, records, requests, config,
                                                                     library).ranking])
        wait_for_copy_writers()
        assert (library / SCORING_COPIES_DIR).exists() == on
    assert rankings[0] == rankings[1]


def test_copies_no_catalog_entry_reads_go_at_the_next_selection(tiny_base, tiny_loras, mc_file, tmp_path,
                                                                 monkeypatch):
    """A changed adapter's old copy and a removed adapter's copy are orphans: the next selection that keeps copies
    deletes them, and keeps those its library still reads (a copy is made only once)."""
    from mashup.library import Library

    monkeypatch.setenv("MASHUP_PRECISION", "bf16")
    workspace, requests = requests_for(tiny_base, mc_file, 4, "cloze")
    library = Library(tmp_path / "lib")
    adapters = [shutil.copytree(path, tmp_path / path.name) for path in tiny_loras[:3]]
    library.add(adapters)
    config = SelectConfig(samples=4, batch_size=4, cache=False, adapters_per_forward=2, read_ahead=True)
    copies_dir = tmp_path / "lib" / SCORING_COPIES_DIR

    def select(records):
        select_checkpoints(workspace, records, requests, config, library.directory)
        wait_for_copy_writers()
        return {p.name for p in copies_dir.iterdir()}

    records = {Path(r.path).name: r for r in library.list()}
    first = select(list(records.values()))
    assert len(first) == 3
    library.remove(records[adapters[2].name].id)  # its copy is an orphan now
    weights = adapters[1] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same bytes rewritten: a new ctime, so a new copy name
    kept = {ScoringCopies(copies_dir).path_for(adapters[0]).name}
    second = select([records[adapters[0].name]])
    assert second == kept and kept < first  # adapter 1's new copy is made when it is scored again
    assert select(library.list()) == kept | {ScoringCopies(copies_dir).path_for(adapters[1]).name}


def test_pruning_is_housekeeping_only_where_copies_are_kept(tiny_base, tiny_loras, mc_file, tmp_path, monkeypatch,
                                                            caplog):
    """No pruning where the engines keep no copies (float32 here); a catalog that cannot be read is a warning."""
    from mashup.library import Library

    library = Library(tmp_path / "lib")
    library.add([tiny_loras[0]])
    orphan = tmp_path / "lib" / SCORING_COPIES_DIR / f"{'0' * 32}.bfloat16.safetensors"
    orphan.parent.mkdir()
    orphan.write_bytes(b"not read")
    monkeypatch.setenv("MASHUP_PRECISION", "fp32")
    workspace, requests = requests_for(tiny_base, mc_file, 4, "cloze")
    config = SelectConfig(samples=4, batch_size=4, cache=False, read_ahead=True)
    select_checkpoints(workspace, library.list(), requests, config, library.directory)
    assert orphan.exists()
    monkeypatch.setenv("MASHUP_PRECISION", "bf16")
    workspace, requests = requests_for(tiny_base, mc_file, 4, "cloze")
    records = library.list()
    library.db_path.write_bytes(b"not a database")
    select_checkpoints(workspace, records, requests, config, library.directory)
    wait_for_copy_writers()
    assert orphan.exists() and "not pruning the scoring copies" in caplog.text
