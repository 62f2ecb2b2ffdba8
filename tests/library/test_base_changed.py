"""A base dir whose weights changed after checkpoints were registered on it: the reason a record is left out
says that dir changed, rather than naming the same path twice as two bases."""

import shutil

from mashup.library import Library
from mashup.library.identity import BaseMatcher
from tests.tiny import save_tiny_base, save_tiny_lora


def test_a_base_changed_in_place_is_said_to_hold_other_weights(tmp_path, tiny_base):
    base = shutil.copytree(tiny_base, tmp_path / "base")
    (record,) = Library(tmp_path / "lib").add([save_tiny_lora(base, tmp_path / "lora", seed=1)], base=str(base))
    assert BaseMatcher(str(base)).mismatch(record) is None
    shutil.rmtree(base)
    save_tiny_base(base, seed=5)
    assert BaseMatcher(str(base)).mismatch(record) == (
        f"base model '{base}' holds other weights than when this checkpoint was registered")
    other = save_tiny_base(tmp_path / "other", seed=6)
    assert BaseMatcher(str(other)).mismatch(record) == f"base model '{base}' has other content than '{other}'"
