"""How selection reports what it left out: one warning per reason (a library's checkpoints of the other kind in
one line, not one each), and a shortage that counts stale checkpoints as stale, not as incompatible."""

import logging
import shutil

import pytest

from mashup.config import DataConfig, MergeConfig, SelectConfig
from mashup.errors import LibraryError
from mashup.library import Library
from mashup.verbs import select


def _select(tmp_path, tiny_base, mc_file, k=1):
    return select(str(tiny_base), DataConfig(data=str(mc_file), scoring="letter", max_length=96),
                  SelectConfig(samples=4, k=k), tmp_path / "lib", merge=MergeConfig())


def test_checkpoints_of_the_other_kind_are_reported_in_one_warning(tmp_path, tiny_base, tiny_loras, tiny_fulls,
                                                                   mc_file, caplog):
    library = Library(tmp_path / "lib")
    library.add(tiny_loras[:1])
    fulls = library.add(tiny_fulls, base=str(tiny_base))
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        _select(tmp_path, tiny_base, mc_file)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith("skipping 3 checkpoints (") and all(r.id in skipped[0] for r in fulls)
    assert skipped[0].endswith("kind is full, not lora")


def test_a_single_checkpoint_left_out_is_named_as_before(tmp_path, tiny_base, tiny_loras, tiny_fulls, mc_file,
                                                        caplog):
    library = Library(tmp_path / "lib")
    library.add(tiny_loras[:1])
    (full,) = library.add(tiny_fulls[:1], base=str(tiny_base))
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        _select(tmp_path, tiny_base, mc_file)
    assert f"skipping {full.id}: kind is full, not lora" in caplog.text


def test_a_shortage_counts_stale_checkpoints_apart_from_incompatible_ones(tmp_path, tiny_base, tiny_loras, mc_file):
    copies = [shutil.copytree(lora, tmp_path / f"copy{i}") for i, lora in enumerate(tiny_loras[:2])]
    Library(tmp_path / "lib").add(copies)
    for copy in copies:
        shutil.rmtree(copy)
    with pytest.raises(LibraryError, match="k=1 but 0 usable lora") as error:
        _select(tmp_path, tiny_base, mc_file)
    line = str(error.value)
    assert "2 stale (files changed or gone since registered" in line and "incompatible" not in line
