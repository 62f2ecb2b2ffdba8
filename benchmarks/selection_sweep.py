"""Selector settings replayed on recorded scores over many orderings of the sample: agreement against cost.

Halving decides on prefixes of the sample, so one seeded sample says little about how often a setting
keeps exhaustive's top 2: a lucky order can hide a near-tie that another order would cut. Every
ordering of the same questions has the same exhaustive ranking, so replaying a setting on many
seeded orderings (no forward pass) estimates, per target, the chance that it keeps exhaustive's top
1 and top 2, and its mean cost in forward tokens. The first ordering is the sample's own.
"""

from __future__ import annotations

import argparse
import math
import random
from statistics import mean
from typing import NamedTuple

from selection_library import bench_dir, candidates, load_results, replay, results_path, selector_config, target_setup

class Setting(NamedTuple):
    label: str
    first: int  # questions in the first round
    factor: float
    survivors: int
    within_se: float
    keep: float | None = None  # the prefilter's kept share of the pool; None: no prefilter
    cap: float | None = None  # HalvingConfig.max_share; None: no cap


SETTINGS = [Setting(f"halving first={m} factor=4 survivors=8 within_se={z:g}", m, 4.0, 8, z)
            for m in (4, 8, 16) for z in (0.0, 1.0, 2.0)]
SETTINGS += [Setting(f"halving first=8 factor=2 survivors=8 within_se={z:g}", 8, 2.0, 8, z) for z in (0.0, 2.0)]
SETTINGS += [Setting("halving first=8 factor=4 survivors=8 within_se=2 max_share=0.1", 8, 4.0, 8, 2.0, cap=0.1)]
SETTINGS += [Setting(f"prefilter keep={k:g} + halving first=8 factor=4 survivors=8 within_se=2", 8, 4.0, 8, 2.0, k)
             for k in (0.25, 0.5)]


def planned_share(setting: Setting, candidates: int = 1000, samples: int = 256, k: int = 2) -> tuple[float, float]:
    """The setting's planned share of exhaustive work at full scale: the schedule alone, and with every round
    keeping the paired rule's cap (as many again), or up to ``cap``. A prefilter halves only what it keeps
    and adds its probe (a forward and a backward of the base over the sample: about 3 candidates' worth)."""
    from mashup.config import HalvingConfig
    from mashup.selection.selectors import halving_schedule, planned_work

    pool = math.ceil(setting.keep * candidates) if setting.keep is not None else candidates
    rounds = halving_schedule(pool, samples, HalvingConfig(min_samples=setting.first, factor=setting.factor,
                                                            min_survivors=setting.survivors), k)
    probe = 3 * samples if setting.keep is not None else 0
    low = (planned_work(rounds) + probe) / (candidates * samples)
    high = (planned_work(rounds, contenders=setting.within_se > 0) + probe) / (candidates * samples)
    return low, high if setting.cap is None else max(low, min(high, setting.cap))


def reordered(requests: list, recorded: dict, order: list[int]) -> tuple[list, dict]:
    """The sample and each candidate's recorded scores in another order of the same questions."""
    def moved_list(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in order]  # correct: None when recorded loss-only

    moved = {cid: {**got, "losses": moved_list(got["losses"]), "correct": moved_list(got.get("correct"))}
             for cid, got in recorded.items()}
    return [requests[i] for i in order], moved


def orderings(target: str, samples: int, count: int) -> list[list[int]]:
    identity = list(range(samples))
    return [identity] + [random.Random(f"order-{target}-{i}").sample(identity, samples) for i in range(1, count)]


def sweep(args: argparse.Namespace) -> dict:
    """Each setting on every target and ordering: rates of top-1 kept and same top 2, mean token cost."""
    from mashup.library import Library
    from mashup.selection.prefilter import PrefilterResult
    from mashup.selection.signal_ranking import best_by_signals

    library = Library(bench_dir(args) / "library")
    rows: dict[str, dict[str, list[tuple[bool, bool, float]]]] = {}
    for target in args.targets.split(","):
        results = load_results(results_path(args, target))
        if "exhaustive" not in results:
            continue
        pool = candidates(library, target, args)
        workspace, _, requests = target_setup(target, args)
        truth = results["exhaustive"]["ranking"]
        signals = "signals" in results and "prefilter+halving" in results  # else: halving settings only
        probe = results["prefilter+halving"]["stats"]["probe_tokens"] if signals else 0
        settings = [s for s in SETTINGS if signals or s.keep is None]
        for order in orderings(target, len(requests), args.orderings):
            sample, recorded = reordered(requests, results["examples"], order)
            for setting in settings:
                run_args = argparse.Namespace(**{**vars(args), "halving_min_samples": setting.first,
                                                 "halving_factor": setting.factor, "min_survivors": setting.survivors,
                                                 "halving_keep_within_se": setting.within_se,
                                                 "halving_max_share": "none" if setting.cap is None
                                                 else str(setting.cap)})
                prefilter = None
                if setting.keep is not None:  # the signals do not depend on the order of the sample
                    chosen = best_by_signals(results["signals"], math.ceil(setting.keep * len(pool)))
                    prefilter = PrefilterResult([r for r in pool if r.id in chosen], probe_tokens=probe)
                config = selector_config(run_args, "halving" if setting.keep is None else "prefilter+halving")
                selection, _ = replay(workspace, pool, sample, config, recorded, prefilter)
                top = [s.id for s in selection.ranking[:2]]
                rows.setdefault(setting.label, {}).setdefault(target, []).append(
                    (truth[0] in top, set(top) == set(truth[:2]), selection.stats.cost_ratio))
        print(f"{target}: {len(settings)} settings replayed on {args.orderings} orderings", flush=True)
    return summarize(rows)


def summarize(rows: dict[str, dict[str, list[tuple[bool, bool, float]]]]) -> dict:
    out = {}
    print("\nsettings replayed (rates over targets x orderings; worst target's top-1 rate; planned share of "
          "exhaustive at 1,000 candidates x 256 questions):")
    plans = {setting.label: planned_share(setting) for setting in SETTINGS}
    for label, by_target in rows.items():
        every = [r for runs in by_target.values() for r in runs]
        out[label] = {"top1_retained": mean(r[0] for r in every), "top2_agreement": mean(r[1] for r in every),
                      "worst_target_top1": min(mean(r[0] for r in runs) for runs in by_target.values()),
                      "token_cost_ratio": mean(r[2] for r in every), "runs": len(every),
                      "per_target_top2": {t: mean(r[1] for r in runs) for t, runs in by_target.items()},
                      "planned_share_1000x256": plans[label]}
        row = out[label]
        print(f"  {label:>66}: top-1 kept {row['top1_retained']:.3f} (worst {row['worst_target_top1']:.2f})  "
              f"top-2 same {row['top2_agreement']:.3f}  cost {row['token_cost_ratio']:.1%} tokens  "
              f"planned {plans[label][0]:.1%}-{plans[label][1]:.1%}")
    return out
