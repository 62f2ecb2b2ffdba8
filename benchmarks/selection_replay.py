"""Record every candidate's per-example scores once, then replay selectors on them without a forward pass.

A selector's ranking depends only on the per-example answer losses of the candidates it scores on
prefixes of one seeded sample (``mashup.selection.driver``). So the benchmark scores every candidate
on the whole sample once, through the real engine (``RecordingExecutor``), and then runs each
selector's real code with a ``ReplayExecutor`` that answers each scoring unit with the recorded
per-example values instead of running the model. Rankings and forward-token accounting are the
selector's own; only the seconds of replayed scoring are estimates (recorded seconds pro rata by
forward tokens), which is why ``selection_library`` also runs the selectors live on some targets
and checks that the live ranking's top k equals the replayed one.

On 2 CPU cores this turns the selector comparison from (1 + each selector's cost) x exhaustive into
1 x exhaustive, which is what makes the real-adapter comparison fit a session at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

from mashup.executors import LocalExecutor, ResultFn, WorkerFactory
from mashup.selection.example_scores import ExampleScores, forward_tokens

Recorded = dict[str, dict[str, Any]]  # record id -> {"losses", "correct", "seconds", "tokens"} on the whole sample


class RecordingExecutor:
    """A local executor that keeps the per-example scores of every unit covering the whole sample."""

    name = "local"  # select_checkpoints pins a local executor's engine to the driver's device
    worker_device = None

    def __init__(self, samples: int, on_record: Callable[[str, dict[str, Any]], None]) -> None:
        self._inner = LocalExecutor()
        self._samples = samples
        self._on_record = on_record

    @property
    def retried(self) -> int:
        return self._inner.retried

    def map(self, factory: WorkerFactory, units: Sequence[Any], *, on_result: ResultFn | None = None) -> list[Any]:
        def record(index: int, results: list[ExampleScores]) -> None:
            for scores in results:
                if scores.indices == tuple(range(self._samples)):
                    self._on_record(scores.id, {"losses": scores.losses, "correct": scores.correct,
                                                "seconds": scores.seconds, "tokens": scores.tokens})
            if on_result:
                on_result(index, results)

        return self._inner.map(factory, units, on_result=record)

    def close(self) -> None:
        self._inner.close()


class ReplayExecutor:
    """Answers scoring units from recorded per-example scores; no model is built or run.

    ``replayed_seconds`` adds up the recorded seconds of the requests served, pro rata by forward tokens.
    """

    name = "replay"
    retried = 0
    worker_device = None  # units sized for the driver's device, as a local run would be

    def __init__(self, recorded: Recorded) -> None:
        self.recorded = recorded
        self.replayed_seconds = 0.0

    def map(self, factory: WorkerFactory, units: Sequence[Any], *, on_result: ResultFn | None = None) -> list[Any]:
        requests = factory.requests  # an EngineFactory: the sample the selection scores, and what it scores
        whole = sum(forward_tokens(r, factory.with_accuracy) for r in requests)
        out = []
        for index, unit in enumerate(units):
            tokens = sum(forward_tokens(requests[i], factory.with_accuracy) for i in unit.indices)
            results = []
            for record in unit.records:
                got = self.recorded[record.id]
                seconds = got["seconds"] * tokens / whole
                self.replayed_seconds += seconds
                correct = ([got["correct"][i] for i in unit.indices]
                           if factory.with_accuracy and got.get("correct") is not None else None)
                results.append(ExampleScores(record.id, unit.indices, [got["losses"][i] for i in unit.indices],
                                             correct, seconds, tokens))
            out.append(results)
            if on_result:
                on_result(index, results)
        return out

    def close(self) -> None:
        pass


@contextmanager
def fixed_prefilter(result: Any) -> Iterator[None]:
    """Make ``prefilter+halving`` use an already computed ``PrefilterResult`` (same inputs, same output).

    The prefilter is deterministic in the candidates, sample and config, so computing it once per
    target serves both the signal report and the replayed selector; its probe tokens and seconds are
    the real ones and are still charged to the selector.
    """
    from mashup.selection import selectors

    original = selectors.run_prefilter
    selectors.run_prefilter = lambda *args, **kwargs: result
    try:
        yield
    finally:
        selectors.run_prefilter = original
