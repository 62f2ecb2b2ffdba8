"""`examples_fingerprint` digests each example's `fingerprint_row` and is order-free; its digests are pinned, as
library records (`data_fingerprint`) hold them."""

from __future__ import annotations

from mashup.data.schema import MCExample, examples_fingerprint, fingerprint_row

EXAMPLES = [MCExample("Which?", ("a", "b c"), 1, "ctx"), MCExample("Q2 é", ("x", "y", "z"), 2)]


def test_the_digest_of_a_set_of_examples_is_pinned_and_order_free() -> None:
    digest = "3ab9e4827f70b738df9eb791c072a679c7d849b7d5edd320d97129f8aed61ef9"
    assert examples_fingerprint(EXAMPLES) == digest
    assert examples_fingerprint(EXAMPLES[::-1]) == digest


def test_a_fingerprint_row_is_context_question_choices_answer() -> None:
    assert fingerprint_row(EXAMPLES[0]) == ["ctx", "Which?", ["a", "b c"], 1]
    assert fingerprint_row(EXAMPLES[1])[0] is None
