"""A moved experiment dir: its own library's entries are re-pointed at the same weights in the new dir, and only
those (other bytes there leave the entry, for its source to be found stale)."""

import logging
import shutil

from mashup.experiment.upstream import relocate_moved
from mashup.library import Library
from tests.library.helpers import noisy_copy


def test_relocate_moved_repoints_only_entries_whose_weights_are_the_same(tmp_path, tiny_loras, caplog):
    out = tmp_path / "out"
    same = noisy_copy(tiny_loras[0], out / "artifacts" / "train-a" / "adapter", seed=1)
    other = noisy_copy(tiny_loras[0], out / "artifacts" / "train-b" / "adapter", seed=2)
    first, second = Library(out / "library").add([same, other], task="alpha")
    moved = out.rename(tmp_path / "moved")
    shutil.rmtree(moved / "artifacts" / "train-b" / "adapter")
    noisy_copy(tiny_loras[0], moved / "artifacts" / "train-b" / "adapter", seed=3)  # trained again: other bytes
    with caplog.at_level(logging.WARNING):
        relocate_moved(moved, moved / "library")
    library = Library(moved / "library")
    assert library.get(first.id).path == str(moved / "artifacts" / "train-a" / "adapter")
    assert library.get(first.id).task == "alpha" and library.fresh([library.get(first.id)])[1] == []
    assert library.get(second.id).path == second.path  # left where it was registered
    assert f"library entry {second.id} not moved" in caplog.text and "weights changed" in caplog.text
