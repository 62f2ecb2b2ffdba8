"""``library add`` of a ``mashup merge`` output records what it was merged from, read from its merge_report.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mashup.config import MergeConfig
from mashup.errors import CheckpointError
from mashup.library import Library
from mashup.merging import merge_checkpoints
from mashup.merging.api import REPORT_NAME
from tests.library.helpers import refused

MERGE_REPORT = REPORT_NAME


@pytest.fixture()
def merged(tmp_path: Path, tiny_loras: list[Path]) -> tuple[Library, list[str], Path]:
    """A library holding two LoRAs, and their average merged (not registered): (library, input ids, merge dir)."""
    library = Library(tmp_path / "lib")
    inputs = library.add(tiny_loras[:2])
    out = tmp_path / "merged"
    merge_checkpoints(inputs, MergeConfig(method="average"), out)
    return library, [r.id for r in inputs], out


def _edit_report(merge_dir: Path, **changes) -> None:
    path = merge_dir / MERGE_REPORT
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_report_name_is_the_one_merge_writes() -> None:
    from mashup.library import records

    assert records.MERGE_REPORT == REPORT_NAME


def test_a_merge_is_registered_with_its_inputs_and_method(merged) -> None:
    library, ids, out = merged
    record = library.add([out])[0]
    assert record.lineage == {"merged_from": ids, "merge_method": "average"}
    assert library.get(record.id).lineage == record.lineage
    assert [r.id for r in library.list(merged_from=ids[0])] == [record.id]


def test_a_recursive_add_records_it_too_and_the_lineage_given_is_kept_beside_it(merged, tmp_path: Path) -> None:
    library, ids, out = merged
    trained = {"trained_on": {"task": "extra", "data_fingerprint": None}}
    record = library.add([out], recursive=True, lineage=trained)[0]
    assert record.lineage == {"merged_from": ids, "merge_method": "average", **trained}


def test_the_lineage_the_add_gives_wins_over_the_report(merged) -> None:
    library, ids, out = merged
    record = library.add([out], lineage={"merged_from": ids[:1], "merge_method": "ties"})[0]
    assert record.lineage == {"merged_from": ids[:1], "merge_method": "ties"}


def test_keys_the_report_adds_later_do_not_matter(merged) -> None:
    library, ids, out = merged
    _edit_report(out, some_new_key={"x": 1})
    assert library.add([out])[0].lineage == {"merged_from": ids, "merge_method": "average"}


@pytest.mark.parametrize("text, what", [
    ("{not json", "cannot read merge_report.json"),
    ("[1, 2]", "holds no checkpoint_ids list and method name"),
    ('{"method": "average", "checkpoint_ids": []}', "holds no checkpoint_ids"),
    ('{"method": "average", "checkpoint_ids": [1]}', "holds no checkpoint_ids"),
    ('{"checkpoint_ids": ["abc"]}', "holds no checkpoint_ids list and method name"),
])
def test_a_report_that_cannot_be_read_is_refused_naming_the_file_and_the_fix(merged, text: str, what: str) -> None:
    library, ids, out = merged
    (out / MERGE_REPORT).write_text(text)
    before = library.list()
    with pytest.raises(CheckpointError) as caught:
        library.add([out])
    line = caught.value.line()
    assert what in line and str(out / MERGE_REPORT) in line and "move merge_report.json away" in line
    assert "\n" not in line and library.list() == before


@pytest.mark.parametrize("changes, what", [({"kind": "full"}, "a full merge, but the weights are lora"),
                                           ({"lora_rank": 16}, "LoRA rank 16, but the adapter's r is 4"),
                                           ({"base": {"identity": "0" * 64}}, "a merge on base 000000000000")])
def test_a_report_of_other_weights_is_refused(merged, changes: dict, what: str) -> None:
    library, _, out = merged
    _edit_report(out, **changes)
    before = library.list()
    with pytest.raises(CheckpointError, match="does not describe these weights") as caught:
        library.add([out])
    assert what in caught.value.line() and library.list() == before


def test_a_report_copied_beside_one_of_its_inputs_is_refused(merged, tiny_loras: list[Path], tmp_path: Path) -> None:
    _, ids, out = merged
    copy = shutil.copytree(tiny_loras[0], tmp_path / "input_copy")
    shutil.copy(out / MERGE_REPORT, copy / MERGE_REPORT)
    refused(Library(tmp_path / "other"), [copy], f"names these weights, {ids[0]}, as an input of their own merge")


def test_a_dir_without_a_report_has_no_merge_lineage(tmp_path: Path, tiny_loras: list[Path]) -> None:
    assert Library(tmp_path / "lib").add(tiny_loras[:1])[0].lineage == {}
