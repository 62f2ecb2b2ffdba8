"""`mashup switch collect`: label which candidate should write the next segment, from random-switch rollouts.

For each sampled train question: a random-switch prefix is generated up to a cut at 10-90% of the
response's segments; each candidate writes the next segment; then ``rollouts`` random-switch completions
follow from each candidate's segment, with the same seeds across candidates (common random numbers: the
same switch pattern and sampling noise). The label is the candidate whose completions score the best
mean reward; an instance where every candidate ties is kept in the log but not used for training.

Every instance is one JSON line appended (and fsynced) to ``rollouts.jsonl``, with all its rollouts and
rewards. Each instance's randomness comes from ``(seed, index)`` alone, so a run killed part-way resumes
with the instances not yet logged and gives the same file. ``task_data.json`` records the task data's
fingerprint (of its rows in order), and a resume on other data, or on its rows reordered, is refused.
``summary.json`` is written last: a collect dir without it is unfinished.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from mashup.config import load_config, save_config
from mashup.data.schema import sample
from mashup.errors import MashupError
from mashup.io import write_json
from mashup.switch.candidates import Candidate, load_candidates, recorded_candidates, with_full_ids
from mashup.switch.config import SWITCH_CONFIG, CollectConfig, SwitchConfig, candidates_difference
from mashup.switch.generation import Plan, Segment, fixed, random_chooser, switch_generate
from mashup.switch.rewards import Reward, build_reward, reward_name
from mashup.switch.tasks import (SwitchItem, SwitchTask, load_switch_task, ordered_task_fingerprint,
                                 task_fingerprint)
from mashup.provenance import write_version

logger = logging.getLogger(__name__)
ROLLOUTS, SUMMARY = "rollouts.jsonl", "summary.json"
COLLECT_CONFIG, TASK_DATA = "collect_config.yaml", "task_data.json"
ORDERED = "ordered_fingerprint"  # task_data.json's key for the digest of the task's items in order
ProgressFn = Callable[[int, int], None]


def best_candidate(means: Sequence[float], aligned: int | None) -> int | None:
    """The index with the best mean reward; None when all tie. Among tied best, the aligned one, else the first."""
    best = max(means)
    tied = [i for i, m in enumerate(means) if m == best]
    if len(tied) == len(means):
        return None
    return aligned if aligned in tied else tied[0]


def decision_steps(plan: Plan) -> list[int]:
    """Segments whose writer a chooser decides (not the first, not one the aligned candidate is forced to)."""
    return [s for s in range(1, plan.n_segments) if plan.forced(s) is None]


def require_switches(plan: Plan) -> list[int]:
    """The plan's decision steps; a MashupError when there is none to label."""
    steps = decision_steps(plan)
    if not steps:
        raise MashupError(f"a response of {plan.n_segments} segments leaves no switch to label", None,
                          "raise max_new_tokens or lower segment_tokens (at least 3 segments with aligned ends)")
    return steps


def choose_cut(plan: Plan, config: CollectConfig, rng: random.Random) -> int:
    steps = require_switches(plan)
    target = rng.uniform(config.cut_min, config.cut_max) * plan.n_segments
    return min(steps, key=lambda s: (abs(s - target), s))


def collect_instance(candidates: Sequence[Candidate], plan: Plan, reward: Reward, item: SwitchItem, index: int,
                     config: CollectConfig) -> dict:
    """One labelled instance: the prefix, each candidate's segment, its k completions and their rewards."""
    seed = config.seed * 1_000_003 + index
    n = len(candidates)
    cut = choose_cut(plan, config, random.Random(seed))
    prefix = switch_generate(candidates, item.query, random_chooser(n, seed), plan, seed=seed, stop_after=cut)
    record: dict = {"index": index, "query": item.query, "gold": item.gold, "cut": cut,
                    "prefix": [asdict(s) for s in prefix.segments], "candidates": [], "label": None}
    if prefix.ended:
        record["dropped"] = "response ended before the cut"
        return record
    for writer in range(n):
        step = switch_generate(candidates, item.query, fixed(writer), plan, seed=seed, prefix=prefix.segments,
                               stop_after=cut + 1)
        rollouts = []
        for j in range(config.rollouts):
            rollout_seed = seed * 31 + j + 1  # the same for every candidate: common random numbers
            done = step if step.ended else switch_generate(
                candidates, item.query, random_chooser(n, rollout_seed), plan, seed=rollout_seed,
                prefix=step.segments)
            result = reward(item, done.text)
            rollouts.append({"seed": rollout_seed, "writers": done.writers, "text": done.text,
                             "reward": result.reward, "correct": result.correct})
        mean = sum(r["reward"] for r in rollouts) / len(rollouts)
        record["candidates"].append({"segment": asdict(step.segments[cut]), "rollouts": rollouts, "mean": mean})
    record["label"] = best_candidate([c["mean"] for c in record["candidates"]], plan.aligned)
    record["dropped"] = "all candidates tie" if record["label"] is None else None
    return record


class RolloutLog:
    """Append-only JSON lines, one finished instance each.

    Reading never changes the file: a line that does not parse is an error naming it. Only ``resume`` (a
    collect about to append) cuts a torn last line, the one a crash mid-write leaves behind.
    """

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        self.path = path
        self.records: list[dict] = []
        if not path.exists():
            return
        with open(path, "rb") as handle:
            lines = handle.readlines()
        good = 0
        for number, line in enumerate(lines, start=1):
            if resume and number == len(lines) and not line.endswith(b"\n"):  # every append ends with one
                logger.warning("dropping a partly written line at the end of %s", path)
                os.truncate(path, good)
                return
            record = _parse_record(line)
            if record is None:
                raise MashupError("rollout log line is not a whole instance record", f"{path}:{number}",
                                  "restore the file from a copy, or run the collect again into a new --out")
            self.records.append(record)
            good += len(line)

    @property
    def done(self) -> set[int]:
        return {r["index"] for r in self.records}

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)


def _parse_record(line: bytes) -> dict | None:
    """The instance a log line holds, or None when it is not one (torn, edited, or another file's)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("index"), int) or "label" not in record:
        return None
    return record


def _resumable(out: Path, config: SwitchConfig, collect_config: CollectConfig) -> bool:
    """Whether ``out`` holds a collect with the same configs (to resume); False for a new or empty dir. Candidates
    are compared by weights, alignment and chat template (``candidates_difference``), the rest as they are."""
    if (out / COLLECT_CONFIG).exists():
        recorded = load_config(out / SWITCH_CONFIG, SwitchConfig)
        # paths as the resume compared them before they were recorded absolute: a relative one as the same string
        difference = (candidates_difference(recorded.candidates, with_full_ids(config.candidates, config.library),
                                            suffix_match=False)
                      or _chat_difference(recorded, config))
        if difference is not None:
            raise MashupError(f"the output dir holds a collect of other candidates ({difference})", str(out),
                              "resume with the same candidates in the same order, or choose another --out")
        same = (recorded.model_dump(exclude={"candidates"}) == config.model_dump(exclude={"candidates"})
                and load_config(out / COLLECT_CONFIG, CollectConfig) == collect_config)
        if not same:
            raise MashupError("the output dir holds a collect with other settings", str(out),
                              "resume with the same settings, or choose another --out")
        return True
    if out.exists() and (not out.is_dir() or not all(_started(p.name) for p in out.iterdir())):
        raise MashupError("output directory already exists and is not a collect", str(out), "choose another --out")
    return False


def _chat_difference(recorded: SwitchConfig, config: SwitchConfig) -> str | None:
    """The first candidate whose chat_template differs: it changes the prompts (names and role labels do not)."""
    return next((f"candidate {i} ({old.label()}): chat_template {old.chat_template} recorded, {new.chat_template} "
                 "in the config" for i, (old, new) in enumerate(zip(recorded.candidates, config.candidates))
                 if old.chat_template != new.chat_template), None)


def _started(name: str) -> bool:
    """A file that a start killed before its last write leaves (the dir is then started afresh)."""
    return name in (SWITCH_CONFIG, "version.json", TASK_DATA) or (name.startswith(".") and name.endswith(".tmp"))


def _task_data(task: SwitchTask, name: str) -> dict:
    """What ``task_data.json`` records: the task data's digest in order (instances are drawn by position), and
    its order-free digest, which collects started before the order was recorded hold alone."""
    return {"task": name, ORDERED: ordered_task_fingerprint(task), "fingerprint": task_fingerprint(task)}


def _require_same_data(out: Path, task: str, current: dict) -> None:
    """Refuse to resume on other task data (another file under the same name, the file edited or its rows
    reordered): the log would mix instances of both. A collect started before the fingerprint was recorded
    resumes unchecked; one whose record has no ordered digest is checked on its order-free one (the order it was
    started on is not known, and the same rows may well be in the same order)."""
    path = out / TASK_DATA
    if not path.is_file():
        logger.debug("%s has no %s: resuming without checking the task data", out, TASK_DATA)
        return
    try:
        record = json.loads(path.read_text())
        key = ORDERED if ORDERED in record else "fingerprint"
        recorded = record[key]
    except (OSError, ValueError, KeyError, TypeError):
        raise MashupError(f"unreadable {TASK_DATA}", str(path), "collect into a new --out, or delete this dir and "
                          "run the collect again") from None
    if key != ORDERED:
        logger.debug("%s records no ordered digest: the task's rows are checked, not their order", path)
    if recorded != current[key]:
        raise MashupError(f"task '{task}' holds other data (or its rows in another order) than the collect in this "
                          f"dir was started on (fingerprint {current[key][:12]}, not {str(recorded)[:12]})", str(out),
                          "collect into a new --out, or delete this dir to start again on the new data")


def _start(out: Path, config: SwitchConfig, collect_config: CollectConfig, task_data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # a config write an earlier, killed start cut short
        stale.unlink()
    # the candidates as `switch train` records them: a resume or a training from another working dir reads the same
    save_config(config.model_copy(update={"candidates": recorded_candidates(config.candidates, config.library)}),
                out / SWITCH_CONFIG)
    write_version(out)
    write_json(out / TASK_DATA, task_data)
    save_config(collect_config, out / COLLECT_CONFIG)  # last: its presence makes the dir a collect to resume


def collect(config: SwitchConfig, collect_config: CollectConfig, out: str | Path, *,
            progress: ProgressFn | None = None, candidates: Sequence[Candidate] | None = None,
            task: SwitchTask | None = None) -> dict:
    """Run (or resume) a collect into ``out``; returns the summary also written to ``summary.json``.

    ``candidates`` and ``task`` may be given already loaded (they must match the configs). The task, plan,
    candidates and reward are all checked before anything is written, so a bad setting leaves no dir behind.
    """
    start = time.perf_counter()
    out = Path(out)
    resuming = _resumable(out, config, collect_config)
    task = task or load_switch_task(collect_config.task)
    task_data = _task_data(task, collect_config.task)
    if resuming:
        _require_same_data(out, collect_config.task, task_data)
    items = sample(task.train, collect_config.instances, collect_config.seed)  # type: ignore[arg-type]
    aligned = config.aligned_index()
    generation = config.generation.model_copy(update={
        "do_sample": True, "temperature": collect_config.temperature, "top_p": collect_config.top_p})
    plan = Plan(generation, aligned)
    require_switches(plan)
    chosen = reward_name(collect_config.reward, task)  # before the models load: a bad reward fails at once
    candidates = list(candidates or load_candidates(config.candidates, config.library, precision=config.precision))
    reward = build_reward(chosen, collect_config.reward, task, candidates[aligned if aligned is not None else 0])
    if not resuming:
        _start(out, config, collect_config, task_data)
    log = RolloutLog(out / ROLLOUTS, resume=True)
    done = log.done
    if progress:  # every check has passed: a progress bar may appear now
        progress(0, len(items))
    for index, item in enumerate(items):
        if index not in done:
            log.append(collect_instance(candidates, plan, reward, item, index, collect_config))
        if progress:
            progress(index + 1, len(items))
    summary = summarise(log.records, [c.name for c in candidates], time.perf_counter() - start)
    write_json(out / SUMMARY, summary)  # atomic: a summary on disk marks a finished collect
    return summary


def summarise(records: Sequence[dict], names: Sequence[str], seconds: float) -> dict:
    labels = Counter(r["label"] for r in records if r["label"] is not None)
    dropped = Counter(r["dropped"] for r in records if r.get("dropped"))
    kept = [r for r in records if r["label"] is not None]
    mean_reward = {name: (sum(r["candidates"][i]["mean"] for r in records if r["candidates"]) /
                          max(1, sum(1 for r in records if r["candidates"]))) for i, name in enumerate(names)}
    return {"instances": len(records), "labelled": len(kept), "dropped": dict(dropped),
            "labels": {names[i]: labels.get(i, 0) for i in range(len(names))},
            "mean_reward_after_segment": mean_reward, "seconds_this_run": round(seconds, 1)}


def labelled_instances(collect_dir: str | Path) -> list[tuple[str, list[Segment], int]]:
    """``(query, prefix segments, label)`` for each labelled instance of a finished collect."""
    out = Path(collect_dir)
    if not (out / SUMMARY).is_file():
        raise MashupError("collect dir is unfinished (no summary.json)", str(out),
                          "run `mashup switch collect` again with the same settings to finish it")
    log = RolloutLog(out / ROLLOUTS)
    return [_labelled(r, log.path) for r in log.records if r["label"] is not None]


def _labelled(record: dict, path: Path) -> tuple[str, list[Segment], int]:
    try:
        return str(record["query"]), [Segment(**s) for s in record["prefix"]], int(record["label"])
    except (KeyError, TypeError, ValueError):
        raise MashupError(f"instance {record['index']} is not a labelled instance record", str(path),
                          "restore the file from a copy, or run the collect again into a new --out") from None
