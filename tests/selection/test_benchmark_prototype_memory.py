"""The prototype memory benchmark: both ways of matching cached rows give the same values."""

from pathlib import Path

import pytest


def test_block_and_whole_matching_agree(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from prototype_memory import fill_cache, match  # benchmarks/prototype_memory.py

    from mashup.selection import prefilter

    monkeypatch.setattr(prefilter, "ARROW_ROWS", 8)  # 20 candidates: blocks of 8, 8 and 4
    fill_cache(tmp_path, "smollm2-135m", 20)
    whole, blocks = (match(tmp_path, "smollm2-135m", 20, 4, way) for way in ("whole", "blocks"))
    assert len(blocks["values"]) == 20 and blocks["values"] == pytest.approx(whole["values"], rel=1e-6)
    assert len(set(blocks["values"])) == 20 and blocks["seconds"] > 0
