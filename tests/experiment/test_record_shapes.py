"""The record models that mirror dataclasses readers rebuild: a field added to one without the other would make
every record written after it unreadable (and every unit computed again)."""

import dataclasses

import pytest

from mashup.evaluation import EvalResult
from mashup.experiment import records
from mashup.scoring import CheckpointScore
from mashup.training import CurvePoint


@pytest.mark.parametrize(("model", "dataclass"), [(records._Evaluation, EvalResult), (records._Point, CurvePoint),
                                                  (records._Ranked, CheckpointScore)])
def test_a_record_model_has_exactly_the_fields_of_the_dataclass_it_mirrors(model, dataclass):
    assert set(model.model_fields) == {field.name for field in dataclasses.fields(dataclass)}
