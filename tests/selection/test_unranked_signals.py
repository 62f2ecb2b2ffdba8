"""A candidate a prefilter signal has no finite value for: kept unranked and warned of by either signal, its lack
cached like a value (a repeat runs no probe), and warnings that list many ids on one capped line."""

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

from mashup.config import PrefilterConfig
from mashup.scoring import CheckpointScore, warn_not_finite
from mashup.selection import prefilter
from mashup.selection.prefilter import run_prefilter
from tests.selection.helpers import records_for, requests_for
from tests.selection.test_not_finite_selection import overflowing_copy


def nan_copy(adapter: Path, out: Path) -> Path:
    """A copy of a LoRA adapter with one NaN in a B factor: every signal of it is NaN."""
    out.mkdir()
    for item in adapter.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    weights = out / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = next(name for name in sorted(tensors) if "lora_B" in name)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = math.nan
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def _count_probes(monkeypatch) -> list:
    calls = []
    real = prefilter.run_probe

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(prefilter, "run_probe", counted)
    return calls


@pytest.mark.parametrize("make, signals", [(overflowing_copy, ["arrow"]), (overflowing_copy, ["first_order", "arrow"]),
                                           (nan_copy, ["first_order"])])
def test_a_repeat_over_a_candidate_without_a_value_runs_no_probe(make, signals, tmp_path, tiny_base, tiny_loras,
                                                                 mc_file, monkeypatch, caplog):
    """Its lack of a value is cached too: a repeat reads everything from the cache, and keeps and warns alike."""
    broken = make(tiny_loras[0], tmp_path / "broken")
    records = records_for([broken, *tiny_loras[1:]])
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    config = PrefilterConfig(signals=signals, keep=1, min_keep=1)
    calls = _count_probes(monkeypatch)
    kept = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=prefilter.__name__):
            result = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "target",
                                   library_dir=tmp_path / "lib")
        said = [r.getMessage() for r in caplog.records if "the prefilter has no value" in r.getMessage()]
        assert len(said) == 1 and records[0].id in said[0]
        kept.append([r.id for r in result.kept])
        assert all(math.isfinite(v) for got in result.values.values() for v in got.values())
    assert len(calls) == 1, "the repeat ran the probe again"
    assert kept[0] == kept[1] and kept[0][0] == records[0].id and len(kept[0]) == 2, "kept unranked, plus one"


def test_a_first_order_value_that_is_not_finite_keeps_the_candidate_unranked(tmp_path, tiny_base, tiny_loras,
                                                                              mc_file, caplog):
    """As Arrow does: the first-order estimate does not rank it last (silently cut), it keeps it and warns."""
    broken = nan_copy(tiny_loras[0], tmp_path / "broken")
    records = records_for([broken, *tiny_loras[1:]])
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    config = PrefilterConfig(signals=["first_order"], keep=1, min_keep=1)
    with caplog.at_level(logging.WARNING, logger=prefilter.__name__):
        result = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "target")
    assert records[0] in result.kept and len(result.kept) == 2
    assert records[0].id not in result.values["first_order"] and len(result.values["first_order"]) == 2
    assert any("the prefilter has no value" in r.getMessage() and records[0].id in r.getMessage()
               for r in caplog.records)


def test_the_unranked_warning_is_one_capped_line_true_of_either_signal(caplog):
    records = [SimpleNamespace(id=f"id{i}", path=f"/adapters/{i}") for i in range(8)]
    with caplog.at_level(logging.WARNING, logger=prefilter.__name__):
        prefilter._warn_unranked(records)
    [message] = [r.getMessage() for r in caplog.records]
    assert "8 candidate(s)" in message and "id4 (/adapters/4) and 3 more" in message and "id5" not in message
    assert "`mashup library remove ID`" in message and "\n" not in message


def test_losses_that_are_not_finite_are_one_warning_listing_them(caplog):
    scores = [CheckpointScore(f"id{i}", None, "lora", math.nan if i < 7 else 1.0, None, 8, 0.0) for i in range(9)]
    with caplog.at_level(logging.WARNING, logger="mashup.scoring"):
        warn_not_finite(scores, {s.id: f"/ckpt/{s.id}" for s in scores})
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("7 checkpoint(s)") and "id4 (/ckpt/id4, loss nan) and 2 more" in message
    assert "id7" not in message and "check their weights, or `mashup library remove ID`" in message


def test_accuracy_if_finite():
    from mashup.scoring import accuracy_if_finite

    assert accuracy_if_finite(1.5, 0.25) == 0.25
    assert accuracy_if_finite(math.nan, 0.25) is None and accuracy_if_finite(math.inf, 0.25) is None
    assert accuracy_if_finite(None, 0.25) is None, "SQLite's NULL for a NaN loss"
    assert accuracy_if_finite(1.5, None) is None
