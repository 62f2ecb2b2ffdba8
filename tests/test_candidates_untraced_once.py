"""A candidate whose lineage reaches a checkpoint no longer in the library is named once per selection, however many
merge configs and targets an experiment checks it under, and however deep in the lineage the missing one is."""

from __future__ import annotations

import logging
from pathlib import Path

from mashup.candidates import find_candidates, find_mergeable_candidates, log_rejections
from mashup.config import DataConfig, MergeConfig
from mashup.data import load_target
from mashup.library import Library

UNTRACED = "no longer in the library"


def _said(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _library(tmp_path: Path, tiny_loras: list[Path]):
    """A merge of a removed checkpoint (``direct``), a merge of that merge (``deeper``) and one plain LoRA."""
    library = Library(tmp_path / "lib")
    direct = library.add(tiny_loras[:1], task="a", lineage={"merged_from": ["0" * 12]})[0]  # never registered
    deeper = library.add(tiny_loras[1:2], task="b", lineage={"merged_from": [direct.id]})[0]
    plain = library.add(tiny_loras[2:], task="c")[0]
    return library, direct, deeper, plain


def test_untraced_candidates_are_carried_and_logged_once(tmp_path, tiny_base, tiny_loras, mc_file, caplog):
    from mashup.candidates import log_left_out

    library, direct, deeper, plain = _library(tmp_path, tiny_loras)
    target = load_target(DataConfig(data=str(mc_file)))
    merges = [MergeConfig(), MergeConfig(method="ties"), MergeConfig(method="task_arithmetic", lora_mode="delta")]
    with caplog.at_level(logging.INFO, logger="mashup.candidates"):
        found = [find_mergeable_candidates(library, str(tiny_base), "lora", target, merges, log_rejected=False)
                 for _ in range(2)]  # two targets of an experiment
    assert _said(caplog, UNTRACED) == []  # left to the caller, as the rejected are
    assert found[0].untraced == [direct.id, deeper.id] and plain.id in [r.id for r in found[0].records]
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        log_left_out(found)
    assert _said(caplog, UNTRACED) == [
        f"2 candidate(s) merged from checkpoints no longer in the library ({direct.id}, {deeper.id}): whether those "
        "saw the target's data cannot be told, so they are ranked; `mashup library remove` them if they may have"]


def test_one_selection_logs_them_once_and_not_when_the_target_is_included(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                         caplog):
    library, direct, deeper, _ = _library(tmp_path, tiny_loras)
    target = load_target(DataConfig(data=str(mc_file)))
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        find_mergeable_candidates(library, str(tiny_base), "lora", target, [MergeConfig(), MergeConfig(method="ties")])
    assert len(_said(caplog, UNTRACED)) == 1 and f"({direct.id}, {deeper.id})" in _said(caplog, UNTRACED)[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        found = find_candidates(library, str(tiny_base), "lora", target, MergeConfig(), include_target=True)
    assert found.untraced == [] and _said(caplog, UNTRACED) == []


def test_grouped_lines_name_a_few_ids_and_count_the_rest(caplog):
    rejected = [{"id": f"id{i}", "reason": "of kind full"} for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="mashup.candidates"):
        log_rejections(rejected)
    assert _said(caplog, "skipping") == ["skipping 8 checkpoints (id0, id1, id2, id3, id4 and 3 more): of kind full"]
