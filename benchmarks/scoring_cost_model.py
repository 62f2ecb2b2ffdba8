"""What a GPU selection's seconds are made of, from forwards already timed: a two-number model of one forward's
seconds, fitted on a live halving's forwards, checked against the exhaustive pass it never saw, then used
to price other ways of batching the same sample.

Runs on a CPU in seconds: it needs the results of ``selection_live_ab.py --split`` (each halving forward's
rows and seconds on a device; ``benchmarks/results/selection-live-ab-*.json``), the targets' data and
SmolLM2's tokenizer, no forward pass. For every timed scoring run it rebuilds the engine's batches of the
same questions (``ScoringPlan``, the same sample and settings as ``selection_library.py``) and so knows each
forward's padded size: rows x the longest row's tokens. The model::

    seconds of a forward = max(floor, a + b * padded tokens)

``a`` and ``b`` are fitted by least squares on the halving forwards of at least 512 rows; ``floor`` is what
the smallest forwards of the file's ``--forward-curve`` took to finish (the host launching kernels), else
what the runs with a small second batch took beyond their first. Each file is one machine, fitted on its own.

    python benchmarks/scoring_cost_model.py --ab benchmarks/results/selection-live-ab-smollm2-h200-n1000-reads.json \
        --targets commonsense_qa,social_iqa,openbookqa,hellaswag,sciq

prints, per machine: the fit, the measured and predicted seconds of the exhaustive pass (held out), and per
target the padded-token share of halving (what its forwards process, where ``token_share`` counts real
tokens) and the predicted forward seconds of halving and exhaustive under four batchings: ``whole
groups`` (the engine before ``engine.STACK_EACH_BATCH``: every length batch, cut by
``batching.length_batches``, runs once for a whole group of adapters sized by the questions),
``stacked`` (the engine now: batches cut by ``batching.stacked_batches``, a group sized by its smallest
batch, each batch stacking as many of it as fill a forward), ``cut by cost``, not built: slots for 128
adapters, each batch stacked, the length-sorted rows cut where the fitted model's seconds are least; and
``packed``, not built either: no padding at all (each adapter's questions back to back, forwards of at most
1,024 median-length rows' worth of real tokens), a lower bound on what any batching of these rows can do.
These are predictions of a model, not timings.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from selection_library import parse_args as bench_args, target_setup

from mashup.evaluation import ScoreSettings, stack_windows
from mashup.selection.engine import CUDA_GROUP_ROWS

ROWS_PER_FORWARD = CUDA_GROUP_ROWS  # what the timed runs used (1,024)
SLOTS = 128  # the first halving round's group: 1,024 rows / 8 questions
BATCH_SIZE = 256  # the benchmark's scoring batch on the device
# the halving rounds (questions, candidates) measured on the H200s, where a target has no timed split
ROUNDS = {"commonsense_qa": [(8, 1000), (32, 250), (128, 63), (256, 16)],
          "social_iqa": [(8, 983), (32, 380), (128, 62), (256, 16)],
          "openbookqa": [(8, 1000), (32, 410), (128, 102), (256, 16)],
          "hellaswag": [(8, 1000), (32, 255), (128, 63), (256, 16)],
          "sciq": [(8, 1000), (32, 250), (128, 63), (256, 16)]}

Batch = tuple[int, int]  # rows, padded length


class Sample:
    """A target's benchmark sample and the engine's loss-only batches of any slice of it."""

    def __init__(self, target: str) -> None:
        from mashup.evaluation import ScoringPlan

        self._plan = ScoringPlan
        workspace, _, self.requests = target_setup(target, bench_args(["--batch-size", str(BATCH_SIZE)]))
        self.settings = workspace.settings(BATCH_SIZE)
        self.lengths = [len(r.prompt_ids) + (0 if r.single_token else len(r.gold_ids)) for r in self.requests]

    @functools.lru_cache(maxsize=None)
    def batches(self, start: int, stop: int, candidates: int = 0) -> tuple[Batch, ...]:
        """The engine's batches of these requests on CUDA: cut for one forward each (the engine before
        ``STACK_EACH_BATCH``), or, given the candidates scored, for stacked forwards."""
        plan = self._plan(self.requests[start:stop], self.settings, with_accuracy=False,
                          stacking=cuda_stacking(candidates) if candidates else None)
        return tuple((len(b.rows), int(b.inputs["input_ids"].shape[1])) for b in plan.batches)

    def real_tokens(self, start: int, stop: int) -> int:
        return sum(self.lengths[start:stop])


class ForwardModel:
    """Seconds of forwards of ``rows`` rows padded to ``length`` tokens, and of the batchings compared."""

    def __init__(self, a: float, b: float, floor: float) -> None:
        self.a, self.b, self.floor = a, b, floor

    def forward(self, rows: int, length: int) -> float:
        return max(self.floor, self.a + self.b * rows * length)

    def engine(self, batches: Sequence[Batch], candidates: int, stack_each_batch: bool = True) -> float:
        """The engine's way (``mashup.selection.engine``): groups of adapters sized by its rule, each batch run
        for a whole group at once or, stacking each batch, in windows of it that fill a forward."""
        group = group_size([rows for rows, _ in batches], stack_each_batch)
        stack_rows = ROWS_PER_FORWARD if stack_each_batch else None
        full, rest = divmod(candidates, group)
        return sum(self._group(batches, size, stack_rows) * count for size, count in ((group, full), (rest, 1)) if size)

    def per_batch(self, batches: Sequence[Batch], candidates: int) -> float:
        """Each batch stacks as many of a unit's adapters (``SLOTS`` loaded at a time) as fill a forward."""
        full, rest = divmod(candidates, SLOTS)
        return sum(self._group(batches, size, ROWS_PER_FORWARD) * count for size, count in ((SLOTS, full), (rest, 1))
                   if size)

    def _group(self, batches: Sequence[Batch], adapters: int, stack_rows: int | None) -> float:
        return sum(self.forward(rows * count, length) for rows, length in batches
                   for _, count in stack_windows(adapters, rows, stack_rows))

    def packed(self, tokens_per_adapter: int, candidates: int, budget: int) -> float:
        """Padding-free forwards (not built): each adapter's questions back to back in its rows, ``SLOTS``
        adapters loaded at a time, each forward at most ``budget`` real tokens. A lower bound: it prices no
        room left at rows' ends and no attention over a packed row's longer context."""
        full, rest = divmod(candidates, SLOTS)
        seconds = 0.0
        for size, count in ((SLOTS, full), (rest, 1)):
            tokens = size * tokens_per_adapter
            forwards = -(-tokens // budget)
            seconds += count * sum(self.forward(1, tokens // forwards + (i < tokens % forwards))
                                   for i in range(forwards))
        return seconds

    def cut_by_cost(self, lengths: Sequence[int], candidates: int) -> tuple[float, tuple[Batch, ...]]:
        """``per_batch`` with the length-sorted rows cut where that minimises the predicted seconds."""
        ordered = sorted(lengths)

        @functools.lru_cache(maxsize=None)
        def best(i: int) -> tuple[float, tuple[Batch, ...]]:
            if i == len(ordered):
                return 0.0, ()
            options = []
            for j in range(i + 1, min(len(ordered), i + BATCH_SIZE) + 1):
                batch = (j - i, ordered[j - 1])
                rest_cost, rest = best(j)
                options.append((self.per_batch([batch], candidates) + rest_cost, (batch,) + rest))
            return min(options)

        return best(0)


def cuda_settings() -> ScoreSettings:
    return ScoreSettings(BATCH_SIZE, torch.device("cuda"), True, 0)  # only the device's type is read: no GPU needed


def cuda_stacking(candidates: int):
    from mashup.selection import engine

    return engine.default_stacking(Path("."), cuda_settings(), candidates)


def group_size(batch_rows: Sequence[int], stack_each_batch: bool = True) -> int:
    """``engine.default_adapters_per_forward`` on CUDA at the benchmark's batch size."""
    from mashup.selection import engine

    saved, engine.STACK_EACH_BATCH = engine.STACK_EACH_BATCH, stack_each_batch
    try:  # on CUDA it reads the device's type only: no base, no GPU needed
        return engine.default_adapters_per_forward(Path("."), cuda_settings(), list(batch_rows))
    finally:
        engine.STACK_EACH_BATCH = saved


def round_slices(rounds: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(first new question, last, candidates) of each halving round: a round scores only its new questions."""
    previous, out = 0, []
    for questions, candidates in rounds:
        out.append((previous, questions, candidates))
        previous = questions
    return out


def timed_runs(split: dict, sample: Sample) -> list[tuple[tuple[Batch, ...], float]]:
    """Each timed scoring run of a split halving as its forwards (rows, padded length) and seconds, in the
    order the rounds ran. The rows it recorded must be the batches rebuilt here, run for the whole group at
    once (the engine before ``STACK_EACH_BATCH``) or each in windows of it."""
    runs, forwards = [], iter(split["forwards"])
    for start, stop, candidates in round_slices([(q, c) for q, c, _ in split["rounds"]]):
        batches = sample.batches(start, stop)
        left = candidates
        while left > 0:
            run = next(forwards)
            copies = run["copies"]
            ways = [[(rows * count, length) for rows, length in batches for _, count in stack_windows(copies, rows, s)]
                    for s in (None, ROWS_PER_FORWARD)]
            way = next((w for w in ways if [rows for rows, _ in w] == run["rows"]), None)
            if way is None:
                raise ValueError(f"a timed run's rows {run['rows']} are not the batches rebuilt here {batches}")
            runs.append((tuple(way), run["seconds"]))
            left -= copies
    return runs


def fit(runs: Sequence[tuple[tuple[Batch, ...], float]], curve: list[dict]) -> ForwardModel:
    """``a`` and ``b`` from the runs of one forward of at least 512 rows; ``floor`` from the forward curve's
    smallest forwards, else from the runs of two forwards whose second is small (a round's long tail): what
    they took beyond their large forward's fit."""
    single = [(rows * length, seconds) for forwards, seconds in runs if len(forwards) == 1
              for rows, length in forwards if rows >= 512]
    tokens, seconds = np.array(single, dtype=float).T
    b, a = np.polyfit(tokens, seconds, 1)
    small = [point["finished_s"] for point in curve if point["rows"] <= 512]
    if not small:
        small = [seconds - (a + b * forwards[0][0] * forwards[0][1]) for forwards, seconds in runs
                 if len(forwards) == 2 and forwards[0][0] >= 512 and forwards[1][0] < 512]
    floor = float(np.median(small)) if small else min(s for _, s in runs)
    return ForwardModel(float(a), float(b), floor)


def measured(result: dict, selector: str, variant: str = "default") -> list[float]:
    return [r["seconds"] for r in result["runs"] if r["selector"] == selector and r["variant"] == variant]


def machine(path: Path, samples: dict[str, Sample], targets: Sequence[str]) -> dict:
    data = json.loads(path.read_text())
    out: dict = {"file": str(path), "targets": {}}
    curve = next((t.get("forward_curve", []) for t in data["targets"].values() if t.get("forward_curve")), [])
    runs = []
    for target, result in data["targets"].items():
        if "split" in result:
            runs += timed_runs(result["split"], samples.setdefault(target, Sample(target)))
    model = fit(runs, curve)
    out["model"] = {"a_s": model.a, "b_s_per_token": model.b, "floor_s": model.floor, "forwards_fitted": len(runs)}
    errors = [sum(model.forward(rows, length) for rows, length in forwards) / seconds - 1 for forwards, seconds in runs]
    out["model"]["run_error_median"] = float(np.median(np.abs(errors)))
    for target, result in data["targets"].items():
        sample = samples[target]
        full = sample.batches(0, len(sample.requests))
        predicted = model.engine(full, result["candidates"], stack_each_batch=False)
        out["targets"][target] = {"exhaustive_measured_s": measured(result, "exhaustive"),
                                  "exhaustive_predicted_forwards_s": predicted,
                                  "halving_split_forwards_s": result.get("split", {}).get("forward_seconds")}
    out["predictions"] = {t: predict(model, samples.setdefault(t, Sample(t)), ROUNDS[t]) for t in targets}
    return out


def predict(model: ForwardModel, sample: Sample, rounds: Sequence[tuple[int, int]]) -> dict:
    n = len(sample.requests)
    exhaustive_candidates = rounds[0][1]
    slices = round_slices(rounds)

    def padded(stacked: bool) -> float:
        def per_adapter(a: int, b: int, c: int) -> int:
            return sum(r * length for r, length in sample.batches(a, b, c if stacked else 0))

        return sum(c * per_adapter(a, b, c) for a, b, c in slices) / (
            exhaustive_candidates * per_adapter(0, n, exhaustive_candidates))

    budget = ROWS_PER_FORWARD * sorted(sample.lengths)[n // 2]  # what a stacked forward of median rows holds
    real = sum(c * sample.real_tokens(a, b) for a, b, c in slices)
    full_real = exhaustive_candidates * sample.real_tokens(0, n)
    ways = {
        "whole groups": (sum(model.engine(sample.batches(a, b), c, False) for a, b, c in slices),
                         model.engine(sample.batches(0, n), exhaustive_candidates, False)),
        "stacked": (sum(model.engine(sample.batches(a, b, c), c) for a, b, c in slices),
                    model.engine(sample.batches(0, n, exhaustive_candidates), exhaustive_candidates)),
        "cut by cost": (sum(model.cut_by_cost(sample.lengths[a:b], c)[0] for a, b, c in slices),
                        model.cut_by_cost(sample.lengths, exhaustive_candidates)[0]),
        "packed": (sum(model.packed(sample.real_tokens(a, b), c, budget) for a, b, c in slices),
                   model.packed(sample.real_tokens(0, n), exhaustive_candidates, budget)),
    }
    return {"token_share": real / full_real, "padded_token_share": padded(False),
            "padded_token_share_stacked": padded(True),
            "forward_seconds": {k: {"halving": h, "exhaustive": e} for k, (h, e) in ways.items()}}


def report(result: dict) -> None:
    m = result["model"]
    print(f"{result['file']}: forward = max({m['floor_s'] * 1e3:.1f} ms, {m['a_s'] * 1e3:.1f} ms + "
          f"{m['b_s_per_token'] * 1e6:.2f} ms per 1k padded tokens), fitted on {m['forwards_fitted']} timed halving "
          f"runs (median error {m['run_error_median']:.1%})")
    for target, row in result["targets"].items():
        measured_s = ", ".join(f"{s:.2f}" for s in row["exhaustive_measured_s"]) or "-"
        print(f"  {target}: exhaustive measured {measured_s} s, its forwards predicted "
              f"{row['exhaustive_predicted_forwards_s']:.2f} s (held out)")
    for target, p in result["predictions"].items():
        ways = "; ".join(f"{way}: {s['halving']:.2f} / {s['exhaustive']:.1f} s ({s['halving'] / s['exhaustive']:.1%})"
                         for way, s in p["forward_seconds"].items())
        print(f"  {target}: halving tokens {p['token_share']:.1%}, padded {p['padded_token_share']:.1%} "
              f"(stacked cuts {p['padded_token_share_stacked']:.1%}); "
              f"predicted forwards, halving / exhaustive: {ways}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ab", type=Path, nargs="+", required=True, help="selection_live_ab.py JSON results")
    parser.add_argument("--targets", default=",".join(ROUNDS))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    samples: dict[str, Sample] = {}
    results = [machine(path, samples, args.targets.split(",")) for path in args.ab]
    for result in results:
        report(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
