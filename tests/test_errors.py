"""How an error line quotes what it did not write itself: a third-party reason, a value read from JSON."""

from mashup.errors import MashupError, short_reason
from mashup.library.values import shown


def test_a_long_reason_is_collapsed_and_cut_within_its_limit():
    reason = short_reason("Repository not found:\n\n    " + "details " * 60)
    assert len(reason) <= 200 and reason.endswith("...") and "\n" not in reason and "  " not in reason
    assert short_reason("short\n  and  plain") == "short and plain"


def test_a_value_is_quoted_as_json_cut_the_same_way_with_its_spaces_kept():
    assert shown(list(range(100))) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11..." and len(shown(list(range(100)))) == 40
    assert shown("q_proj|  v_proj") == '"q_proj|  v_proj"'  # in a regex the spaces may be the fault
    assert shown(b"\x00blob") == repr(b"\x00blob")


def test_an_error_is_one_line_of_what_where_and_fix():
    assert MashupError("bad value", "run.yaml", "fix it").line() == "bad value in run.yaml; fix it"


def test_names_are_listed_up_to_a_count_then_counted():
    from mashup.errors import listed

    assert listed(["a", "b"]) == "a, b"
    assert listed([str(i) for i in range(8)]) == "0, 1, 2, 3, 4 and 3 more"
    assert listed(["a", "b", "c"], shown=2) == "a, b and 1 more"
