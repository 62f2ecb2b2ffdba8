"""The selection driver: scores candidates on sample prefixes through an executor, the cache and progress.

Everything a selector needs sits on ``SelectionContext``: ``score(records, n)`` returns each record's
score on the first n requests of the seeded sample, reusing what this call or the cache already has
and scoring only the rest (only the requests past a shorter prefix already scored). Results land in
this process, which alone writes them to the cache, unit by unit, so an interrupted selection keeps
what it scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mashup.config import SelectConfig
from mashup.data.prompts import EncodedRequest
from mashup.evaluation import ScoreSettings
from mashup.executors import Executor
from mashup.library import CheckpointRecord
from mashup.library.score_cache import fingerprint
from mashup.scoring import CheckpointScore
from mashup.selection.example_scores import ExampleScores
from mashup.selection.scores import PrefixScore, ScoreStore
from mashup.selection.units import EngineFactory, ScoreUnit

ProgressFn = Callable[[int, int], None]  # (checkpoint-samples done, planned)


@dataclass
class RoundStats:
    samples: int
    candidates: int
    scored: int = 0  # scores computed now (the rest came from this call or the cache)
    cached: int = 0
    seconds: float = 0.0  # scoring this round (the first includes loading the base)


@dataclass
class SelectionStats:
    """What a selection cost, against scoring every candidate on the whole sample."""

    selector: str
    executor: str
    candidates: int
    samples: int
    forward_tokens: int = 0  # tokens sent through the model to score candidates in this call
    exhaustive_tokens: int = 0  # what scoring every candidate on every sample would send
    probe_tokens: int = 0  # the prefilters' pass over the base (forward-token equivalents)
    scored: int = 0  # candidate scores computed in this call
    cached: int = 0  # candidate scores read from the cache
    prefiltered_out: int = 0
    retried_units: int = 0
    prefilter_seconds: float = 0.0
    probe_seconds: float = 0.0  # of prefilter_seconds, the probe's: loading the base, forward and backward
    scoring_seconds: float = 0.0
    rounds: list[RoundStats] = field(default_factory=list)
    token_cap: float | None = None  # halving's cap on the cost ratio, as resolved (HalvingConfig.max_share)

    @property
    def cost_ratio(self) -> float:
        """Forward tokens spent (probe included) over the exhaustive selection's."""
        return (self.forward_tokens + self.probe_tokens) / max(1, self.exhaustive_tokens)

    @property
    def nothing_scored(self) -> bool:
        return self.forward_tokens == 0 and self.probe_tokens == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "cost_ratio": self.cost_ratio}


@dataclass
class Selection:
    ranking: list[CheckpointScore]  # best first; candidates dropped early carry their partial n
    stats: SelectionStats


class SelectionContext:
    """One selection's scoring state: the sample, the executor, the cache and what is known so far."""

    def __init__(self, base_dir: Path, requests: Sequence[EncodedRequest], settings: ScoreSettings,
                 config: SelectConfig, executor: Executor, factory: EngineFactory, store: ScoreStore,
                 stats: SelectionStats, *, unit_size: Callable[[Sequence[EncodedRequest], int], int],
                 library_dir: Path | None = None,
                 allow_pickle: bool = False, progress: ProgressFn | None = None) -> None:
        self.base_dir, self.requests, self.settings, self.config = base_dir, list(requests), settings, config
        self.executor, self.factory, self.store, self.stats = executor, factory, store, stats
        self.unit_size, self.library_dir, self.allow_pickle = unit_size, library_dir, allow_pickle
        self._progress = progress
        self._done, self._planned = 0, 0
        self.known: dict[str, PrefixScore] = {}

    def fingerprint(self, n: int | None = None) -> str:
        return fingerprint(self.base_dir, self.requests[:n], self.settings.bf16)

    def plan(self, checkpoint_samples: int) -> None:
        """Announce how much scoring (candidates x samples) the selector expects, for the progress bar."""
        self._planned += checkpoint_samples
        self._advance(0)

    def _advance(self, amount: int) -> None:
        self._done += amount
        if self._progress:
            self._progress(min(self._done, self._planned), self._planned)

    def score(self, records: Sequence[CheckpointRecord], n: int) -> dict[str, PrefixScore]:
        """Each record's score on the first ``n`` requests (by id)."""
        prefix = self.requests[:n]
        out = {r.id: self.known[r.id] for r in records if r.id in self.known and self.known[r.id].n == n}
        round_stats = RoundStats(samples=n, candidates=len(records))
        cached = self.store.lookup(prefix, [r for r in records if r.id not in out])
        todo: dict[int, list[CheckpointRecord]] = {}
        for record in records:
            if record.id in out:
                continue
            if record.id in cached:
                self._advance(n - self._start(record, n))
                out[record.id] = self.known[record.id] = cached[record.id]
                round_stats.cached += 1
            else:
                todo.setdefault(self._start(record, n), []).append(record)
        # a unit: the adapters scored from ``start`` on that one worker call loads at once
        sizes = {start: self.unit_size(self.requests[start:n], len(group)) for start, group in todo.items()}
        units = [ScoreUnit(tuple(group[i:i + sizes[start]]), tuple(range(start, n)))
                 for start, group in todo.items() for i in range(0, len(group), sizes[start])]

        def on_result(index: int, results: list[ExampleScores]) -> None:
            unit, fresh = units[index], []
            for record, scores in zip(unit.records, results):
                delta = PrefixScore.of(scores)
                total = self.known[record.id].extended(delta) if unit.indices[0] > 0 else delta
                total.cached = False
                out[record.id] = self.known[record.id] = total
                fresh.append((record, total))
                self.stats.forward_tokens += scores.tokens
            self.store.store(prefix, fresh)
            round_stats.scored += len(fresh)
            self._advance(len(fresh) * len(unit.indices))

        start = time.perf_counter()
        if units:
            self.executor.map(self.factory, units, on_result=on_result)
        round_stats.seconds = time.perf_counter() - start
        self.stats.scoring_seconds += round_stats.seconds
        self.stats.scored += round_stats.scored
        self.stats.cached += round_stats.cached
        self.stats.rounds.append(round_stats)
        return out

    def _start(self, record: CheckpointRecord, n: int) -> int:
        """Where scoring resumes: after the longest shorter prefix already known for this record."""
        known = self.known.get(record.id)
        return known.n if known is not None and known.n < n else 0

