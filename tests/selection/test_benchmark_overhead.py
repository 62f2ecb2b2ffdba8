"""The overhead benchmark: forwards stood in for, every adapter still read into its slot, halving still ranking."""

from pathlib import Path

from mashup import evaluation
from mashup.selection import engine
from tests.selection.helpers import wait_for_copy_writers


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
        assert halving["seconds_share"] == halving["seconds"] / exhaustive["seconds"]


def test_with_real_forwards_the_benchmark_times_live_selections(tiny_base, mc_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    for name in ("GROUP_ROWS", "CPU_LARGE_MODEL_GROUP_ROWS", "CUDA_GROUP_ROWS"):
        monkeypatch.setattr(engine, name, getattr(engine, name))
    from selection_overhead import main

    real_forwards = []
    run = evaluation.ScoringPlan.run
    monkeypatch.setattr(evaluation.ScoringPlan, "run",
                        lambda plan, *a, **k: real_forwards.append(len(plan.batches)) or run(plan, *a, **k))
    result = main(["--base", str(tiny_base), "--target", str(mc_file), "--adapters", "6", "--distinct", "6",
                   "--samples", "16", "--batch-size", "4", "--group-rows", "16", "--repeats", "1",
                   "--read-ahead", "off", "--selectors", "halving,exhaustive", "--real-forwards",
                   "--dir", str(tmp_path / "bench")])
    halving, exhaustive = result["runs"]
    assert sum(real_forwards) == halving["scoring_runs"] + exhaustive["scoring_runs"] > 0  # each batch ran for real
    assert halving["seconds_share"] == halving["seconds"] / exhaustive["seconds"] and "seconds_share" not in exhaustive


def test_with_scoring_copies_the_benchmark_makes_them_and_ranks_as_without(tiny_base, mc_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    for name in ("GROUP_ROWS", "CPU_LARGE_MODEL_GROUP_ROWS", "CUDA_GROUP_ROWS"):
        monkeypatch.setattr(engine, name, getattr(engine, name))
    monkeypatch.setenv("MASHUP_PRECISION", "bf16")  # the slots hold bf16: a bf16 copy is the same values
    from selection_overhead import main

    result = main(["--base", str(tiny_base), "--target", str(mc_file), "--adapters", "6", "--distinct", "3",
                   "--samples", "16", "--batch-size", "4", "--group-rows", "16", "--repeats", "2",
                   "--read-ahead", "on", "--scoring-copies", "both", "--dir", str(tmp_path / "bench")])
    runs = {(r["repeat"], r["selector"], r["copies"]): r for r in result["runs"]}
    assert len(runs) == 8 and {r["precision"] for r in result["runs"]} == {"bf16"}
    for repeat, selector in {(r, s) for r, s, _ in runs}:
        assert runs[repeat, selector, True]["top2"] == runs[repeat, selector, False]["top2"]
    wait_for_copy_writers()
    copies = list((tmp_path / "bench").glob("*/copies-library/scoring-copies/*.safetensors"))
    assert len(copies) == 6  # one per adapter dir (hard links to 3 files have 6 paths)
