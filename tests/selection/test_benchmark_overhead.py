"""The overhead benchmark: forwards stood in for, every adapter still read into its slot, halving still ranking."""

from pathlib import Path

from mashup import evaluation
from mashup.selection import engine


def test_the_overhead_benchmark_counts_forwards_and_rounds_by_selector(tiny_base, mc_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    for name in ("GROUP_ROWS", "CPU_LARGE_MODEL_GROUP_ROWS", "CUDA_GROUP_ROWS"):  # the script sets them
        monkeypatch.setattr(engine, name, getattr(engine, name))
    from selection_overhead import main  # benchmarks/selection_overhead.py

    run = evaluation.ScoringPlan.run
    result = main(["--base", str(tiny_base), "--target", str(mc_file), "--adapters", "12", "--distinct", "3",
                   "--samples", "16", "--batch-size", "4", "--group-rows", "16", "--repeats", "1",
                   "--read-ahead", "both", "--dir", str(tmp_path / "bench")])
    assert evaluation.ScoringPlan.run is run  # restored
    runs = {(r["selector"], r["read_ahead"]): r for r in result["runs"]}
    assert set(runs) == {(s, ra) for s in ("exhaustive", "halving") for ra in (True, False)}
    for read_ahead in (True, False):
        exhaustive, halving = runs["exhaustive", read_ahead], runs["halving", read_ahead]
        assert exhaustive["token_share"] == 1.0 and halving["token_share"] < 1.0
        assert halving["rounds"][0] == {**halving["rounds"][0], "samples": 8, "candidates": 12}
        assert len(halving["rounds"]) > 1 and halving["rounds"][-1]["samples"] == 16
        assert 0 < sum(r["seconds"] for r in halving["rounds"]) <= halving["seconds"]
        # 16 rows per forward over batches of up to 4 questions: 4 adapters share each, so 3 groups run
        # every batch of the 16 questions
        assert exhaustive["scoring_runs"] % 3 == 0 and exhaustive["scoring_runs"] >= 12
        assert halving["scoring_runs"] > 0
