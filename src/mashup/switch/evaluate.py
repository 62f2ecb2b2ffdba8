"""`mashup switch eval`: accuracy with 95% confidence intervals for switch generation and its baselines.

Rows (each run on the same seeded sample of the task's test split, greedy unless configured):
- ``alone:<name>``: each candidate writes the whole response;
- ``random``: a uniformly random writer per segment (aligned ends kept);
- ``switcher-untrained`` / ``switcher-trained``: the switcher without / with its LoRA;
- ``router``: one candidate per query, chosen by the (trained if given) switcher on the empty trace;
- ``logit-average``: every token from the mean distribution of the candidates sharing a vocabulary;
- ``merge``: the uniform weight average of the candidates sharing a base (LoRA merged in), i.e. Mashup's
  average merge of their deltas with the plain base counted as a zero delta.
A row that does not apply (one vocabulary or one base per candidate, no trained adapter) is skipped with
its reason. The cost of each row is the tokens run through all models (switcher included) per response
token, and the seconds per response token; beside it, the tokens a loop without per-candidate caches would run
(re-encoding the prompt and the response so far for every segment, as the reference code does).
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mashup.data.schema import sample
from mashup.errors import MashupError
from mashup.switch.candidates import Candidate, load_candidates
from mashup.switch.config import SYSTEMS, SwitchConfig, SwitchEvalConfig
from mashup.switch.generation import Plan, SwitchTrace, fixed, logit_average_generate, random_chooser, switch_generate
from mashup.switch.rewards import build_reward, reward_name
from mashup.switch.switcher import Switcher, load_switcher
from mashup.switch.tasks import SwitchItem, SwitchTask, load_switch_task
from mashup.switch.train import switcher_base

logger = logging.getLogger(__name__)
Z95 = 1.959963984540054
System = Callable[[SwitchItem, int], SwitchTrace]  # (item, item seed) -> trace
ProgressFn = Callable[[str, int, int], None]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (sound at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SystemResult:
    name: str
    correct: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    traces: list[SwitchTrace] = field(default_factory=list)

    def summary(self, n_candidates: int) -> dict:
        n, hits = len(self.correct), sum(self.correct)
        low, high = wilson_interval(hits, n)
        tokens = sum(s.tokens for t in self.traces for s in t.segments) or 1
        writers = [s.writer for t in self.traces for s in t.segments if s.writer >= 0]
        return {"system": self.name, "accuracy": hits / max(n, 1), "ci95": [low, high], "n": n,
                "mean_reward": sum(self.rewards) / max(n, 1),
                "forwarded_per_token": sum(sum(t.forwarded) + t.chooser_tokens for t in self.traces) / tokens,
                "reencoded_per_token": sum(t.reencoded + t.chooser_tokens for t in self.traces) / tokens,
                "seconds_per_token": sum(t.seconds for t in self.traces) / tokens,
                "response_tokens": tokens / max(n, 1),
                "segment_share": [writers.count(i) / max(len(writers), 1) for i in range(n_candidates)]}


def average_weights(candidates: Sequence[Candidate]) -> Candidate:
    """A candidate whose weights are the uniform average of the given same-base candidates' weights."""
    merged = copy.deepcopy(candidates[0].model)
    states = [c.model.state_dict() for c in candidates]
    with torch.no_grad():
        merged.load_state_dict({k: sum(s[k].float() for s in states) / len(states) for k in states[0]})
    first = candidates[0]
    return Candidate("merge", "merge", merged, first.tokenizer, first.chat, first.base_dir, first.device, first.bf16,
                     first.eos_ids)


def groups_by(candidates: Sequence[Candidate], key: Callable[[Candidate], object]) -> list[list[int]]:
    found: dict[object, list[int]] = {}
    for i, c in enumerate(candidates):
        found.setdefault(key(c), []).append(i)
    return sorted((g for g in found.values() if len(g) > 1), key=len, reverse=True)


def build_systems(config: SwitchConfig, candidates: Sequence[Candidate],
                  switchers: dict[str, Switcher]) -> tuple[dict[str, System], dict[str, str]]:
    """The rows that apply, and the reason for each that does not."""
    aligned = config.aligned_index()
    alone = Plan(config.generation.model_copy(update={"aligned_ends": False}), aligned)
    switched = Plan(config.generation, aligned)
    n = len(candidates)
    systems: dict[str, System] = {}
    skipped: dict[str, str] = {}
    for i, c in enumerate(candidates):
        systems[f"alone:{c.name}"] = lambda item, seed, i=i: switch_generate(candidates, item.query, fixed(i), alone,
                                                                              seed=seed)
    systems["random"] = lambda item, seed: switch_generate(candidates, item.query, random_chooser(n, seed), switched,
                                                           seed=seed)
    for name, switcher in switchers.items():
        systems[name] = lambda item, seed, s=switcher: _with_switcher(candidates, item, s, switched, seed)
    router = switchers.get("switcher-trained") or switchers["switcher-untrained"]
    systems["router"] = lambda item, seed: _routed(candidates, item, router, alone, seed)
    if "switcher-trained" not in switchers:
        skipped["switcher-trained"] = "no trained adapter (switcher.adapter) given"
    vocab = groups_by(candidates, Candidate.vocabulary_key)
    if vocab:
        members = [candidates[i] for i in vocab[0]]
        systems["logit-average"] = lambda item, seed: logit_average_generate(members, item.query, alone, seed=seed)
    else:
        skipped["logit-average"] = "no two candidates share a vocabulary"
    bases = groups_by(candidates, lambda c: str(c.base_dir.resolve()))
    if bases:
        merged = average_weights([candidates[i] for i in bases[0]])
        systems["merge"] = lambda item, seed: switch_generate([merged], item.query, fixed(0), Plan(
            alone.config, None), seed=seed)
    else:
        skipped["merge"] = "no two candidates share a base"
    return systems, skipped


def _with_switcher(candidates: Sequence[Candidate], item: SwitchItem, switcher: Switcher, plan: Plan,
                   seed: int) -> SwitchTrace:
    before = switcher.forwarded
    return switch_generate(candidates, item.query, switcher, plan, seed=seed,
                           chooser_cost=lambda: switcher.forwarded - before)


def _routed(candidates: Sequence[Candidate], item: SwitchItem, switcher: Switcher, plan: Plan,
            seed: int) -> SwitchTrace:
    before = switcher.forwarded
    choice = switcher(item.query, [], 0)
    return switch_generate(candidates, item.query, fixed(choice), plan, seed=seed,
                           chooser_cost=lambda: switcher.forwarded - before)


def load_switchers(config: SwitchConfig, n: int) -> dict[str, Switcher]:
    """The untrained switcher, and the trained one where ``switcher.adapter`` is set (loaded first: an adapter
    trained for other candidates or on another base fails before any model loads)."""
    base = switcher_base(config)
    settings: dict[str, Any] = {"top_p": config.switcher.top_p, "seed": config.generation.seed,
                                "precision": config.precision}
    trained = (load_switcher(base, n, adapter=config.switcher.adapter, candidates=config.candidates, **settings)
               if config.switcher.adapter else None)
    found = {"switcher-untrained": load_switcher(base, n, **settings)}
    return found if trained is None else {**found, "switcher-trained": trained}


def system_names(config: SwitchConfig) -> list[str]:
    """Every row an eval may run with these candidates, whether or not it applies to them."""
    return [*(f"alone:{c.label()}" for c in config.candidates), *SYSTEMS]


def require_known_systems(config: SwitchConfig, systems: Sequence[str] | None) -> None:
    unknown = [s for s in systems or [] if s not in system_names(config)]
    if unknown:
        raise MashupError(f"unknown system {', '.join(map(repr, unknown))}", None,
                          f"use --system with one of: {', '.join(system_names(config))}")


def _require_applicable(systems: Sequence[str], skipped: dict[str, str]) -> None:
    for name in systems:
        if name in skipped:
            raise MashupError(f"system '{name}' does not apply here: {skipped[name]}", None,
                              "drop that --system, or give what it needs")


def evaluate_switch(config: SwitchConfig, eval_config: SwitchEvalConfig, *, progress: ProgressFn | None = None,
                    candidates: Sequence[Candidate] | None = None, task: SwitchTask | None = None) -> dict:
    """Every applicable row on the same questions; returns rows, skipped rows and the traces."""
    require_known_systems(config, eval_config.systems)
    task = task or load_switch_task(eval_config.task)
    items = (task.test if eval_config.max_examples is None
             else sample(task.test, eval_config.max_examples, 0))  # type: ignore[arg-type]
    chosen = reward_name(eval_config.reward, task)  # before the models load: a bad reward fails at once
    switchers = load_switchers(config, len(config.candidates))  # first: a mismatched adapter fails at once
    candidates = list(candidates or load_candidates(config.candidates, config.library, precision=config.precision))
    aligned = config.aligned_index()
    reward = build_reward(chosen, eval_config.reward, task, candidates[aligned if aligned is not None else 0])
    systems, skipped = build_systems(config, candidates, switchers)
    if eval_config.systems:
        _require_applicable(eval_config.systems, skipped)
        systems = {k: v for k, v in systems.items() if k in eval_config.systems}
    results = {name: SystemResult(name) for name in systems}
    rng = random.Random(config.generation.seed)
    seeds = [rng.randrange(2**31) for _ in items]
    for name, system in systems.items():
        for done, (item, seed) in enumerate(zip(items, seeds), start=1):
            trace = system(item, seed)
            scored = reward(item, trace.text)
            result = results[name]
            result.correct.append(scored.correct)
            result.rewards.append(scored.reward)
            result.traces.append(trace)
            if progress:
                progress(name, done, len(items))
    rows = [r.summary(len(candidates)) for r in results.values()]
    return {"task": task.name, "n": len(items), "candidates": [c.name for c in candidates],
            "rows": rows, "skipped": skipped, "cost": cost_ratio(rows),
            "traces": {name: [t.to_dict() for t in r.traces] for name, r in results.items()},
            "golds": [item.gold for item in items]}


def cost_ratio(rows: Sequence[dict]) -> dict:
    """Each switched row's tokens and seconds per response token over the mean single-model row's."""
    alone = [r for r in rows if r["system"].startswith("alone:")]
    if not alone:
        return {}
    tokens = sum(r["forwarded_per_token"] for r in alone) / len(alone)
    seconds = sum(r["seconds_per_token"] for r in alone) / len(alone)
    return {r["system"]: {"tokens": r["forwarded_per_token"] / tokens, "seconds": r["seconds_per_token"] / seconds,
                          "tokens_without_caches": r["reencoded_per_token"] / tokens}
            for r in rows if not r["system"].startswith("alone:")}
