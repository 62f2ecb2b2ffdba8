"""Offline rewards for a finished response, behind one small interface and an explicit registry.

- ``number_match``: 1 when the response's final number equals the gold number (GSM8K, arithmetic).
- ``number_closeness``: 1 / (1 + |final - gold| / max(1, |gold|)), 0 without a number: a dense signal for
  collecting labels with small models, which rarely get the number exactly (every candidate then ties).
- ``choice_cloze``: after the switched trace, the aligned candidate picks a choice by cloze scoring (the
  length-normalised log-likelihood, as ``mashup eval --scoring cloze``); the reward is 0/1 correctness or
  the margin log p(gold) - logsumexp(log p(others)) over summed choice log-likelihoods (``mode: margin``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from mashup.batching import shared_prefix_logprobs
from mashup.data.prompts import Request, encode_requests
from mashup.errors import MashupError
from mashup.switch.candidates import Candidate
from mashup.switch.config import RewardConfig
from mashup.switch.tasks import Kind, SwitchItem, SwitchTask

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
CLOZE_MAX_LENGTH = 1024


@dataclass(frozen=True)
class RewardResult:
    reward: float
    correct: bool


class Reward(Protocol):
    def __call__(self, item: SwitchItem, response: str) -> RewardResult: ...


def final_number(text: str) -> str | None:
    """The first number after the last 'answer is', else the last number in the text; commas dropped."""
    marks = list(ANSWER_IS.finditer(text))
    after = NUMBER.search(text, marks[-1].end()) if marks else None
    found = [after.group()] if after else NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def same_number(predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    try:
        return abs(float(predicted) - float(gold.replace(",", ""))) < 1e-6
    except ValueError:
        return predicted.strip() == gold.strip()


class NumberMatch:
    def __call__(self, item: SwitchItem, response: str) -> RewardResult:
        correct = same_number(final_number(response), str(item.gold))
        return RewardResult(float(correct), correct)


class NumberCloseness:
    """A dense reward for small models that rarely get the number exactly: 1 / (1 + relative error)."""

    def __call__(self, item: SwitchItem, response: str) -> RewardResult:
        predicted, gold = final_number(response), str(item.gold).replace(",", "")
        correct = same_number(predicted, gold)
        try:
            error = abs(float(str(predicted)) - float(gold)) / max(1.0, abs(float(gold)))
        except ValueError:  # no number in the response
            return RewardResult(0.0, correct)
        return RewardResult(1.0 / (1.0 + error), correct)


class ChoiceCloze:
    """The judge (the aligned candidate) scores each choice after the question and the trace."""

    def __init__(self, judge: Candidate, task: SwitchTask, margin: bool) -> None:
        if task.template is None:
            raise MashupError(f"choice_cloze needs a multiple-choice task, not '{task.name}'", None,
                              "use number_match for open tasks")
        self.judge, self.template, self.margin = judge, task.template, margin

    @torch.no_grad()
    def __call__(self, item: SwitchItem, response: str) -> RewardResult:
        example = item.example
        assert example is not None, "choice items carry their example"
        stem = self.template.cloze(example).removesuffix("Answer:")
        prompt = f"{stem}Reasoning: {' '.join(response.split())}\nAnswer:"
        request = Request(prompt, tuple(f" {c}" for c in example.choices), example.answer)
        encoded = encode_requests(self.judge.tokenizer, [request], CLOZE_MAX_LENGTH)[0]
        model = self.judge.model
        sums = shared_prefix_logprobs(model, [encoded.prompt_ids], [encoded.continuation_ids],
                                      self.judge.pad_id, self.judge.device)[0].float().cpu()
        normalised = sums / torch.tensor(encoded.continuation_chars, dtype=torch.float32)
        correct = int(normalised.argmax()) == example.answer
        if not self.margin:
            return RewardResult(float(correct), correct)
        others = torch.cat([sums[:example.answer], sums[example.answer + 1:]])
        return RewardResult(float(sums[example.answer] - torch.logsumexp(others, 0)), correct)


RewardFactory = Callable[[RewardConfig, SwitchTask, Candidate], Reward]
REWARDS: dict[str, RewardFactory] = {}
REWARD_KINDS: dict[str, Kind] = {}  # the task kind a reward can score (none: any)


def register_reward(name: str, factory: RewardFactory, kind: Kind | None = None) -> None:
    if name in REWARDS:
        raise ValueError(f"reward '{name}' is already registered")
    REWARDS[name] = factory
    if kind is not None:
        REWARD_KINDS[name] = kind


register_reward("number_match", lambda config, task, judge: NumberMatch(), "number")
register_reward("number_closeness", lambda config, task, judge: NumberCloseness(), "number")
register_reward("choice_cloze", lambda config, task, judge: ChoiceCloze(judge, task, config.mode == "margin"),
                "choice")


def reward_name(config: RewardConfig, task: SwitchTask) -> str:
    """The registered reward ``config`` picks for ``task`` (``auto``: number_match for open tasks, choice_cloze for
    multiple choice); a MashupError when there is none or it cannot score the task. Needs no model, so a bad
    reward is refused before any candidate loads."""
    name = config.name
    if name == "auto":
        name = "number_match" if task.kind == "number" else "choice_cloze"
    if name not in REWARDS:
        raise MashupError(f"unknown reward '{name}'", None, f"use one of: {', '.join(sorted(REWARDS))}, auto")
    kind = REWARD_KINDS.get(name, task.kind)
    if kind != task.kind:
        fitting = [n for n in sorted(REWARDS) if REWARD_KINDS.get(n, task.kind) == task.kind]
        raise MashupError(f"reward '{name}' scores {kind} answers, but task '{task.name}' is {task.kind}", None,
                          f"use --reward {' or '.join([*fitting, 'auto'])}")
    if config.mode != "binary" and name != "choice_cloze":  # only a choice's log-likelihoods have a margin
        raise MashupError(f"reward mode '{config.mode}' applies to choice_cloze, not to {name}", None,
                          "drop --reward-mode (reward.mode), or use a multiple-choice task")
    return name


def build_reward(name: str, config: RewardConfig, task: SwitchTask, judge: Candidate) -> Reward:
    """The reward ``name``: what ``reward_name`` returned for ``config`` and ``task``, the one check, done before
    any model loads. ``judge`` is the aligned candidate."""
    return REWARDS[name](config, task, judge)
