"""Selectors: which candidates are scored on how much of the sample. One registry, names in errors.

- ``exhaustive``: every candidate on the whole sample (the paper's selection).
- ``halving``: successive halving on nested prefixes of the same sample; survivors reach the whole sample.
  Besides the best 1/factor, a round keeps (up to as many again) the candidates whose per-example loss
  gap to the k-th best is within ``keep_within_se`` standard errors: a paired comparison on the same
  questions, so near-ties race on to a bigger sample instead of being cut by noise. A round keeps only
  as many near-ties as the cost cap ``max_share`` leaves room for (``auto``: 10% of exhaustive's
  forward tokens where that leaves near-ties room: on pools of about 330 candidates and more).
- ``prefilter+halving``: signals that need no forward pass per candidate (first-order estimate, Arrow
  prototypes) keep the most promising share of the candidates (half by default: on real adapters the
  signals are too weak to keep fewer safely), then halving ranks those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

from mashup.config import AUTO_MAX_SHARE, AUTO_NEAR_TIE_ROOM, HalvingConfig
from mashup.errors import MashupError
from mashup.library import CheckpointRecord
from mashup.scoring import CheckpointScore, rank
from mashup.selection.driver import SelectionContext
from mashup.selection.example_scores import forward_tokens
from mashup.selection.prefilter import run_prefilter
from mashup.selection.scores import PrefixScore

Selector = Callable[[SelectionContext, Sequence[CheckpointRecord]], list[CheckpointScore]]
_REGISTRY: dict[str, Selector] = {}


def register_selector(name: str, selector: Selector) -> None:
    if name in _REGISTRY:
        raise MashupError(f"selector '{name}' is already registered")
    _REGISTRY[name] = selector


def selector_names() -> list[str]:
    return sorted(_REGISTRY)


def get_selector(name: str) -> Selector:
    if name not in _REGISTRY:
        raise MashupError(f"unknown selector '{name}'", None, f"use one of: {', '.join(selector_names())}")
    return _REGISTRY[name]


def halving_schedule(candidates: int, samples: int, config: HalvingConfig, k: int) -> list[tuple[int, int]]:
    """Rounds as ``(sample size, candidates scored)``: keep 1/factor, grow the sample factor times.

    Candidates never drop below ``max(k, min_survivors)``; once there, the next round is the whole
    sample. The last round always scores its survivors on all ``samples``.
    """
    floor = max(k, config.min_survivors)
    n = samples if candidates <= floor else min(config.min_samples, samples)
    rounds = [(n, candidates)]
    while n < samples:
        candidates = max(math.ceil(candidates / config.factor), min(floor, candidates))
        n = samples if candidates <= floor else min(samples, math.ceil(n * config.factor))
        rounds.append((n, candidates))
    return rounds


def planned_work(rounds: Sequence[tuple[int, int]], contenders: bool = False) -> int:
    """Candidate-samples the schedule scores, each candidate scoring only the requests new to it.

    With ``contenders``, the most it can score: every round after the first also carries as many close
    contenders as it keeps (``close_contenders``' cap), never more than the round before scored.
    """
    previous, total, alive = 0, 0, 0
    for i, (n, planned) in enumerate(rounds):
        alive = min(alive, 2 * planned) if contenders and i else planned
        total += alive * (n - previous)
        previous = n
    return total


def _ranked(context: SelectionContext, records: Sequence[CheckpointRecord], n: int
            ) -> tuple[list[CheckpointScore], dict[str, PrefixScore]]:
    """The records ranked on the first ``n`` requests, and their prefix scores by id."""
    scores = context.score(records, n)
    return rank([scores[r.id].checkpoint_score(r) for r in records], context.config.metric), scores


def close_contenders(ranked: Sequence[CheckpointScore], scores: Mapping[str, PrefixScore], keep: int, k: int,
                     within_se: float) -> list[CheckpointScore]:
    """Candidates ranked past ``keep`` that are not significantly worse than the k-th best (at most ``keep``).

    Significance is a paired test on the same requests: the mean per-example loss gap to the k-th best
    against ``within_se`` standard errors of that gap. Scores without per-example losses are not tested.
    """
    reference = scores[ranked[k - 1].id].losses if within_se > 0 and len(ranked) >= k else None
    if reference is None or len(reference) < 2:
        return []
    close = []
    for score in ranked[keep:]:
        if len(close) == keep:
            break
        losses = scores[score.id].losses
        if losses is None:
            continue
        gaps = [a - b for a, b in zip(losses, reference)]
        mean, stdev = _mean_and_stdev(gaps)
        if mean <= within_se * stdev / math.sqrt(len(gaps)):
            close.append(score)
    return close


def _mean_and_stdev(values: Sequence[float]) -> tuple[float, float]:
    """``statistics.fmean`` and ``stdev`` to float rounding (within 3e-16), about 50x faster: ``stdev`` sums
    exact fractions, 0.1 ms a call: 0.3 s of a halving over 1,000 candidates."""
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def round_tokens(rounds: Sequence[tuple[int, int]], prefix_tokens: Sequence[int], j: int) -> int:
    """Forward tokens one candidate scores in round ``j``: the requests new to it (at least 1)."""
    previous = rounds[j - 1][0] if j else 0
    return max(1, prefix_tokens[rounds[j][0]] - prefix_tokens[previous])


def near_tie_room(rounds: Sequence[tuple[int, int]], prefix_tokens: Sequence[int], i: int, room: float) -> int:
    """How many candidates past the schedule round ``i + 1`` may carry, with ``room`` forward tokens left after
    round ``i`` and every later round still scoring what the schedule plans.

    A round commits only the next round's work, so the cap holds whatever later rounds keep: with no
    near-ties they cost exactly the schedule counted here.
    """
    room -= sum(rounds[j][1] * round_tokens(rounds, prefix_tokens, j) for j in range(i + 1, len(rounds)))
    return max(0, math.floor(room / round_tokens(rounds, prefix_tokens, i + 1)))


def token_cap(context: SelectionContext, rounds: Sequence[tuple[int, int]], prefix_tokens: Sequence[int]
              ) -> float | None:
    """The share of exhaustive forward tokens the whole selection may spend, a prefilter's probe included
    (``max_share``; None: no cap).

    ``auto`` is ``AUTO_MAX_SHARE`` where that leaves near-ties ``AUTO_NEAR_TIE_ROOM`` of the schedule's own
    tokens; on smaller pools, whose schedule costs more, the cap would cut the near-tie rule short or turn it
    off, so there is none.
    """
    share = context.config.halving.max_share
    if share != "auto":
        return share
    stats = context.stats
    schedule = sum(planned * round_tokens(rounds, prefix_tokens, j) for j, (_, planned) in enumerate(rounds))
    fits = (1 + AUTO_NEAR_TIE_ROOM) * schedule + stats.probe_tokens <= AUTO_MAX_SHARE * stats.exhaustive_tokens
    return AUTO_MAX_SHARE if fits else None


def exhaustive(context: SelectionContext, records: Sequence[CheckpointRecord]) -> list[CheckpointScore]:
    samples = len(context.requests)
    context.plan(len(records) * samples)
    return _ranked(context, records, samples)[0]


def halving(context: SelectionContext, records: Sequence[CheckpointRecord]) -> list[CheckpointScore]:
    """Successive halving; the ranking lists the final round, then each earlier round's dropped candidates."""
    config = context.config
    rounds = halving_schedule(len(records), len(context.requests), config.halving, config.k)
    context.plan(planned_work(rounds))
    within_se = config.halving.keep_within_se if config.metric == "loss" else 0.0
    prefix_tokens = list(itertools.accumulate((forward_tokens(r, context.factory.with_accuracy)
                                               for r in context.requests), initial=0))
    cap = context.stats.token_cap = token_cap(context, rounds, prefix_tokens)
    budget = math.inf if cap is None else cap * context.stats.exhaustive_tokens - context.stats.probe_tokens
    by_id = {r.id: r for r in records}
    survivors, dropped, spent = list(records), [], 0
    for i, (n, planned) in enumerate(rounds):
        previous = rounds[i - 1][0] if i else 0
        if len(survivors) > planned:  # close contenders kept past the schedule
            context.plan((len(survivors) - planned) * (n - previous))
        ranked, scores = _ranked(context, survivors, n)
        spent += len(survivors) * (prefix_tokens[n] - prefix_tokens[previous])
        if i == len(rounds) - 1:
            return _final_ranking(ranked, dropped)
        keep = rounds[i + 1][1]
        close = close_contenders(ranked, scores, keep, config.k, within_se)
        if budget < math.inf:
            close = close[:near_tie_room(rounds, prefix_tokens, i, budget - spent)]
        # a loss that is not finite on a prefix stays so on the whole sample: never selected, it is not scored on
        kept = {s.id for s in ranked[:keep] + close if s.finite}
        dropped.append([s for s in ranked if s.id not in kept])
        survivors = [by_id[s.id] for s in ranked if s.id in kept]
        _fewer_alive(context, rounds, i, len(survivors))
        if not survivors:  # every one not finite: nothing left to score
            return _final_ranking([], dropped)
    raise AssertionError("a schedule has at least one round")


def _final_ranking(ranked: list[CheckpointScore], dropped: list[list[CheckpointScore]]) -> list[CheckpointScore]:
    """The last round's ranking, then each earlier round's dropped candidates, latest first."""
    everyone = ranked + [s for group in reversed(dropped) for s in group]
    return sorted(everyone, key=lambda s: not s.finite)  # stable: not finite last, as ``rank`` has it


def _fewer_alive(context: SelectionContext, rounds: list[tuple[int, int]], i: int, alive: int) -> None:
    """Cap the schedule's rounds past ``i`` at ``alive`` candidates, in place, and un-plan the work cut: where
    losses that are not finite were dropped, fewer than planned survive, and later rounds score only those."""
    unplanned = sum(max(0, rounds[j][1] - alive) * (rounds[j][0] - rounds[j - 1][0]) for j in range(i + 1, len(rounds)))
    if unplanned:
        context.plan(-unplanned)
        rounds[i + 1:] = [(n, min(planned, alive)) for n, planned in rounds[i + 1:]]


def prefilter_halving(context: SelectionContext, records: Sequence[CheckpointRecord]) -> list[CheckpointScore]:
    """Keep the prefilters' most promising candidates, then rank them by halving."""
    config = context.config
    result = run_prefilter(records, context.requests, context.settings, context.base_dir, config.prefilter,
                           context.fingerprint(), k=config.k, library_dir=context.library_dir,
                           cache_values=config.cache, allow_pickle=context.allow_pickle)
    context.stats.probe_tokens += result.probe_tokens
    context.stats.prefilter_seconds += result.seconds
    context.stats.probe_seconds += result.probe_seconds
    context.stats.prefiltered_out = len(records) - len(result.kept)
    return halving(context, result.kept)


register_selector("exhaustive", exhaustive)
register_selector("halving", halving)
register_selector("prefilter+halving", prefilter_halving)
