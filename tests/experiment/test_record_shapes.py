"""The record models that mirror dataclasses readers rebuild: a field added to one without the other would make
every record written after it unreadable (and every unit computed again)."""

import dataclasses
import typing

import pytest
from pydantic import BaseModel

from mashup.evaluation import EvalResult
from mashup.experiment.records import RESULTS
from mashup.scoring import CheckpointScore
from mashup.training import CurvePoint


def _shape(kind: str, field: str) -> type[BaseModel]:
    """The model of ``result.<field>`` in a result of ``kind`` (of each item where the field is a list)."""
    annotation = RESULTS[kind].model_fields[field].annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


@pytest.mark.parametrize(("kind", "field", "dataclass"), [("eval", "test", EvalResult), ("merge", "test", EvalResult),
                                                          ("train", "curve", CurvePoint),
                                                          ("select", "ranking", CheckpointScore)])
def test_a_record_model_has_exactly_the_fields_of_the_dataclass_it_mirrors(kind, field, dataclass):
    model = _shape(kind, field)
    assert set(model.model_fields) == {f.name for f in dataclasses.fields(dataclass)}
