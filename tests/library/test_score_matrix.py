"""`mashup library scores`: the checkpoints x targets relevance matrix from the score cache."""

import json

from mashup.config import DataConfig, SelectConfig
from mashup.library import Library
from mashup.library.score_cache import ScoreCache
from mashup.verbs import select
from tests.test_cli import run_cli


def test_scores_record_their_target_sample_and_seconds(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                       monkeypatch):
    lib = tmp_path / "lib"
    library = Library(lib)
    records = library.add(tiny_loras[:2], task="sciq") + library.add(tiny_loras[2:], task="obqa")
    data = DataConfig(data=str(mc_file), scoring="letter")
    first = select(str(tiny_base), data, SelectConfig(samples=8, k=1, seed=0), lib)
    select(str(tiny_base), data, SelectConfig(samples=6, k=1, seed=1), lib)
    entries = ScoreCache(lib).entries()
    assert len(entries) == 6 and all(e.seconds and e.seconds > 0 for e in entries)
    assert {e.target for e in entries} == {"target"}
    assert entries[0].sample == {"target": "target", "samples": 8, "seed": 0, "formulation": "letter",
                                 "base": str(tiny_base)}
    by_id = {s.id: s for s in first.ranking}
    seconds = {e.checkpoint_sha: e.seconds for e in entries if e.sample["seed"] == 0}
    assert all(abs(seconds[r.sha256] - by_id[r.id].seconds) < 1e-9 for r in records)

    matrix = json.loads(run_cli(["library", "scores", "--library", lib, "--json"], capsys, monkeypatch)[0])
    labels = [c["label"] for c in matrix["columns"]]
    assert labels == ["target (n=8 seed=0 formulation=letter)", "target (n=6 seed=1 formulation=letter)"]
    assert [c["id"] for c in matrix["checkpoints"]] == [r.id for r in records]
    key = matrix["columns"][0]["key"]
    assert {i: matrix["cells"][i][key]["loss"] for i in by_id} == {i: s.loss for i, s in by_id.items()}
    filtered = json.loads(run_cli(["library", "scores", "--task", "obqa", "--library", lib, "--json"], capsys,
                                  monkeypatch)[0])
    assert [c["id"] for c in filtered["checkpoints"]] == [records[2].id]
    filtered = json.loads(run_cli(["library", "scores", "--checkpoint", records[1].id[:5], "--library", lib,
                                   "--json"], capsys, monkeypatch)[0])
    assert [c["id"] for c in filtered["checkpoints"]] == [records[1].id]
    empty = json.loads(run_cli(["library", "scores", "--target", "arc_easy", "--library", lib, "--json"], capsys,
                               monkeypatch)[0])
    assert empty["columns"] == [] and empty["checkpoints"] == []
    out, _ = run_cli(["library", "scores", "--metric", "accuracy", "--library", lib], capsys, monkeypatch)
    assert "target (n=8" in out and records[0].id in out


def test_removed_checkpoints_stay_visible_as_removed(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    lib = tmp_path / "lib"
    records = Library(lib).add(tiny_loras[:2])
    select(str(tiny_base), DataConfig(data=str(mc_file), scoring="letter"), SelectConfig(samples=4, k=1), lib)
    Library(lib).remove(records[0].id)
    matrix = json.loads(run_cli(["library", "scores", "--library", lib, "--json"], capsys, monkeypatch)[0])
    assert {c["id"]: c["in_library"] for c in matrix["checkpoints"]} == {records[0].id: False, records[1].id: True}



def test_a_loss_that_is_not_finite_shows_no_accuracy(tmp_path, tiny_loras):
    """Rows cached before such a loss lost its accuracy hold one read off NaN logits: the matrix shows none."""
    import math

    from mashup.library.report import score_matrix

    lib = tmp_path / "lib"
    library = Library(lib)
    records = library.add(tiny_loras[:3])
    rows = [(records[0].sha256, math.nan, 0.25, 8, 1.0), (records[1].sha256, math.inf, 0.5, 8, 1.0),
            (records[2].sha256, 1.5, 0.75, 8, 1.0)]
    ScoreCache(lib).put("f" * 64, rows, target="target", sample={"samples": 8})
    cells = {cid: by_column["f" * 12] for cid, by_column in score_matrix(library).cells.items()}
    assert [cells[r.id]["accuracy"] for r in records] == [None, None, 0.75]
    assert cells[records[0].id]["loss"] is None and cells[records[2].id]["loss"] == 1.5
