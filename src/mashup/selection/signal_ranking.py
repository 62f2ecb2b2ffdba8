"""The prefilter's cut: the candidates its signals rank best, taken from each signal in turn (round robin), so one
misleading signal cannot crowd out the other."""

from __future__ import annotations

from collections.abc import Sequence


def best_by_signals(values: dict[str, dict[str, float]], count: int) -> set[str]:
    """The ``count`` ids the signals rank best (lowest value first, ties by id), taken from each in turn."""
    return _round_robin([sorted(v, key=lambda i: (v[i], i)) for v in values.values()], count)


def _round_robin(rankings: Sequence[Sequence[str]], count: int) -> set[str]:
    """Take the next best of each ranking in turn until ``count`` distinct ids are taken."""
    chosen: set[str] = set()
    cursors = [0] * len(rankings)
    while len(chosen) < count and any(c < len(r) for c, r in zip(cursors, rankings)):
        for i, ranking in enumerate(rankings):
            while cursors[i] < len(ranking) and ranking[cursors[i]] in chosen:
                cursors[i] += 1
            if cursors[i] < len(ranking) and len(chosen) < count:
                chosen.add(ranking[cursors[i]])
                cursors[i] += 1
    return chosen
