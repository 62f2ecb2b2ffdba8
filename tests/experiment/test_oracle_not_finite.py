"""The oracle arm merges every combination of k candidates, indexed as planned from their count (those whose loss
is not finite too); a combination holding one of those stops with one line naming it, not a failed merge later."""

import math

import pytest

from mashup.errors import MashupError
from mashup.experiment.plan import Unit, merge_checkpoint_ids
from tests.experiment.test_merge_ids_not_finite import _context


def test_an_oracle_combination_with_a_nan_candidate_is_refused_by_name():
    context = _context({"a": 1.0, "b": math.nan, "c": 2.0})  # k=2: (a, b), (a, c), (b, c)
    assert merge_checkpoint_ids(Unit("merges", "merge", "t", "oracle:1"), context)[0] == ["a", "c"]
    for index in (0, 2):
        with pytest.raises(MashupError, match=r"oracle unit merge/t/oracle:\d would merge checkpoint\(s\) whose "
                                              "selection loss is not finite: b;"):
            merge_checkpoint_ids(Unit("merges", "merge", "t", f"oracle:{index}"), context)
