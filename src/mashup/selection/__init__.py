"""Selection at library scale: a fast scoring engine, sublinear selectors, prefilters, fan-out.

``select_checkpoints`` ranks candidates with a selector (``exhaustive``, ``halving``,
``prefilter+halving``) through an executor (``local`` or ``ray``); ``ScoringEngine`` scores many
adapters against one base with the sample batched once.
"""

from mashup.selection.api import select_checkpoints
from mashup.selection.driver import Selection, SelectionStats
from mashup.selection.engine import ScoringEngine
from mashup.selection.example_scores import ExampleScores
from mashup.selection.selectors import get_selector, halving_schedule, register_selector, selector_names

__all__ = ["ExampleScores", "ScoringEngine", "Selection", "SelectionStats", "get_selector", "halving_schedule",
           "register_selector", "select_checkpoints", "selector_names"]
