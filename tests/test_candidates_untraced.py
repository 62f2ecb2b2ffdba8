"""A merge whose input left the library cannot be traced to the data that input saw: selection still ranks it
(nothing says it saw the target) but says so in one warning, naming it."""

import logging

from mashup.config import DataConfig, MergeConfig, SelectConfig
from mashup.library import Library
from mashup.verbs import merge, select


def test_a_merge_of_a_removed_checkpoint_is_ranked_with_a_warning(tmp_path, tiny_base, tiny_loras, mc_file, caplog):
    library = Library(tmp_path / "lib")
    inputs = library.add(tiny_loras[:2], task="target")  # mc_file's name: trained on the target
    library.add(tiny_loras[2:])
    merge([r.id for r in inputs], MergeConfig(), tmp_path / "merged", library.directory)
    (merged,) = library.add([tmp_path / "merged"])
    data = DataConfig(data=str(mc_file), scoring="letter", max_length=96)
    result = select(str(tiny_base), data, SelectConfig(samples=4, k=1), library.directory)
    assert merged.id in [e["id"] for e in result.excluded]
    library.remove(inputs[0].id)
    library.remove(inputs[1].id)
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        result = select(str(tiny_base), data, SelectConfig(samples=4, k=1), library.directory)
    assert merged.id in [s.id for s in result.ranking]
    said = [r.getMessage() for r in caplog.records if "no longer in the library" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"1 candidate(s) merged from checkpoints no longer in the library "
                                                 f"({merged.id})")
