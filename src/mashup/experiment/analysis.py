"""From recorded units to the paper's figures: best learning rates on validation, then test-split numbers.

Every choice (the learning rate of each arm, the oracle's merge) is made on the validation split carved
from the target's train data; the test split is only ever reported. Means and standard deviations are
over seeds; an arm's runs are compared seed by seed with the from-scratch runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean, pstdev
from typing import Any

from mashup.run import parity
from mashup.training import CurvePoint, TrainResult

Records = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Run:
    """One finished training unit, as the tables need it."""

    task: str
    arm: str
    seed: int
    lr: float
    test: float
    validation: float
    validation_loss: float
    result: TrainResult
    early_drop: float

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Run:
        unit, result = record["fields"], record["result"]
        curve = [CurvePoint(**point) for point in result["curve"]]
        train = TrainResult(total_steps=result["total_steps"], train_seconds=result["train_seconds"],
                            eval_seconds=result["eval_seconds"], curve=curve)
        return cls(task=unit["task"], arm=unit["arm"], seed=unit["seed"], lr=result["train_config"]["lr"],
                   test=result["test"]["accuracy"], validation=result["validation"]["accuracy"],
                   validation_loss=result["validation"]["loss"], result=train,
                   early_drop=result["early_drop"]["drop"])


@dataclass(frozen=True)
class Cell:
    """Mean and (population) standard deviation over seeds; ``n`` seeds contributed."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Cell:
        return cls(mean(values), pstdev(values), len(values)) if values else cls(None, None, 0)


def train_runs(records: Records, task: str, arm: str) -> dict[float, list[Run]]:
    """Finished runs of one arm on one task, by learning rate, sorted by seed."""
    by_lr: dict[float, list[Run]] = {}
    for record in records.values():
        unit = record["fields"]
        if unit["kind"] == "train" and unit["task"] == task and unit["arm"] == arm:
            run = Run.from_record(record)
            by_lr.setdefault(run.lr, []).append(run)
    return {lr: sorted(runs, key=lambda r: r.seed) for lr, runs in sorted(by_lr.items())}


def _validation_score(runs: list[Run]) -> tuple[float, float]:
    return mean(r.validation for r in runs), -mean(r.validation_loss for r in runs)


def best_lr(runs_by_lr: dict[float, list[Run]]) -> float:
    """The learning rate with the best mean validation accuracy over seeds (ties: lower validation loss,
    then the smaller rate). The test split plays no part."""
    if not runs_by_lr:
        raise ValueError("no finished runs to choose a learning rate from")
    return max(sorted(runs_by_lr), key=lambda lr: _validation_score(runs_by_lr[lr]))


def chosen_runs(records: Records, task: str, arm: str, oracle_arms: list[str] | None = None
                ) -> tuple[str, float, list[Run]] | None:
    """(arm, lr, runs) an arm reports: its best LR on validation; the oracle also picks its merge there."""
    if arm == "oracle":
        options = [(a, lr, runs) for a in oracle_arms or [] for lr, runs in train_runs(records, task, a).items()]
        if not options:
            return None
        return max(options, key=lambda o: (_validation_score(o[2]), -o[1]))
    runs = train_runs(records, task, arm)
    if not runs:
        return None
    lr = best_lr(runs)
    return arm, lr, runs[lr]


def oracle_arms(records: Records, task: str) -> list[str]:
    return sorted({r["fields"]["arm"] for r in records.values()
                   if r["fields"]["task"] == task and r["fields"]["arm"].startswith("oracle:")
                   and r["fields"]["kind"] == "train"})


def accuracy_cell(records: Records, task: str, arm: str) -> Cell:
    """Test accuracy of an arm at its chosen setting; 'mashup_at_init' is the merged init, untrained."""
    if arm == "mashup_at_init":
        merge = _find(records, "merge", task, "mashup_loss")
        return Cell.of([merge["result"]["test"]["accuracy"]]) if merge else Cell(None, None, 0)
    chosen = chosen_runs(records, task, arm, oracle_arms(records, task))
    return Cell.of([r.test for r in chosen[2]]) if chosen else Cell(None, None, 0)


def _find(records: Records, kind: str, task: str, arm: str) -> dict[str, Any] | None:
    return next((r for r in records.values() if r["fields"]["kind"] == kind and r["fields"]["task"] == task
                 and r["fields"]["arm"] == arm), None)


@dataclass(frozen=True)
class Convergence:
    """Share of training steps to reach 99% / 100% of the from-scratch final accuracy, mean over seeds
    (None when any seed never does), and the wall-clock figures at 99%."""

    p99: float | None
    p100: float | None
    seconds_p99: float | None
    scratch_seconds: float | None
    seeds: int


def overhead_seconds(records: Records, task: str, samples: int) -> float:
    """Selection (as a cold, uncached selection costs) plus the merge: what Mashup pays before training."""
    selection = _find(records, "select", task, f"samples:{samples}")
    merge = _find(records, "merge", task, "mashup_loss")
    if selection is None or merge is None:
        return 0.0
    return selection["result"]["selection_uncached"] + merge["result"]["merge_seconds"]


def convergence(records: Records, task: str, arm: str, samples: int) -> Convergence | None:
    """Seed by seed against the from-scratch run at its best LR (for 'scratch': against its own final)."""
    scratch = chosen_runs(records, task, "scratch")
    chosen = chosen_runs(records, task, arm, oracle_arms(records, task))
    if scratch is None or chosen is None:
        return None
    reference = {r.seed: r.result for r in scratch[2]}
    overhead = 0.0 if arm == "scratch" else overhead_seconds(records, task, samples)
    pairs = [(run.result, reference[run.seed]) for run in chosen[2] if run.seed in reference]
    if not pairs:
        return None
    parities = [parity(result, ref, overhead) for result, ref in pairs]

    def share(key: str) -> float | None:
        values = [p[key]["fraction_of_steps"] for p in parities]
        return None if any(v is None for v in values) else mean(values)

    seconds = [p["p99"]["seconds_with_overhead"] for p in parities]
    return Convergence(p99=share("p99"), p100=share("p100"),
                       seconds_p99=None if any(s is None for s in seconds) else mean(seconds),
                       scratch_seconds=mean(ref.train_seconds for _, ref in pairs), seeds=len(pairs))


def sweep_cell(records: Records, task: str, arm: str) -> Cell:
    """Test accuracy of a Figure 2 / Figure 3 point (trained at the Mashup arm's best LR, every seed)."""
    runs = [run for runs in train_runs(records, task, arm).values() for run in runs]
    return Cell.of([r.test for r in runs])


def average_ranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = highest value; ties share the mean of their ranks."""
    ordered = sorted(values, key=lambda name: -values[name])
    ranks: dict[str, float] = {}
    position = 0
    while position < len(ordered):
        tied = [n for n in ordered[position:] if values[n] == values[ordered[position]]]
        for name in tied:
            ranks[name] = position + (len(tied) + 1) / 2
        position += len(tied)
    return ranks
