"""Each candidate is checked against the first one kept: a first checkpoint refused on its own (a DoRA adapter here)
does not make every later one look unmergeable."""

from mashup.candidates import _mergeable
from mashup.config import MergeConfig
from tests.merging.helpers import records


def test_candidates_are_checked_against_the_first_kept_one(tiny_loras):
    dora, *plain = records(tiny_loras)
    dora.use_dora = True
    kept, rejected = _mergeable([dora, *plain], MergeConfig())
    assert [r.id for r in kept] == [r.id for r in plain]
    assert [(r.id, "DoRA" in reason) for r, reason in rejected] == [(dora.id, True)]
