"""Prompt templates and the two answer formulations (letter and cloze), tokenized."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mashup.data.schema import LETTERS, MCExample

if TYPE_CHECKING:  # the score cache reads requests without a tokenizer: no transformers import (~2 s) for it
    from transformers import PreTrainedTokenizerBase

Formulation = Literal["letter", "cloze"]
DEFAULT_INSTRUCTION = "Answer the question below by choosing the correct choice."


@dataclass(frozen=True)
class PromptTemplate:
    """How one task words its prompt; the defaults suit a generic question file."""

    instruction: str = DEFAULT_INSTRUCTION
    question_label: str = "Question"
    context_label: str = "Context"

    def _stem(self, example: MCExample) -> list[str]:
        lines = []
        if example.context:
            lines.append(f"{self.context_label}: {example.context}")
        lines.append(f"{self.question_label}: {example.question}")
        return lines

    def letter(self, example: MCExample) -> str:
        """Instruction, question, lettered choices, then ``Answer:``; the target is the letter."""
        choices = [f"{LETTERS[i]}: {choice}" for i, choice in enumerate(example.choices)]
        return "\n".join([self.instruction, *self._stem(example), "Choices:", *choices, "Answer:"])

    def cloze(self, example: MCExample) -> str:
        """Question then ``Answer:``; the target is the text of the choice (lm-eval style)."""
        return "\n".join([*self._stem(example), "Answer:"])


@dataclass(frozen=True)
class Request:
    """A prompt with its candidate continuations; ``answer`` indexes the correct one."""

    prompt: str
    continuations: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class EncodedRequest:
    prompt_ids: tuple[int, ...]
    continuation_ids: tuple[tuple[int, ...], ...]
    continuation_chars: tuple[int, ...]
    answer: int

    @property
    def single_token(self) -> bool:
        """True when every continuation is one token: one forward pass scores them all."""
        return all(len(ids) == 1 for ids in self.continuation_ids)

    @property
    def gold_ids(self) -> tuple[int, ...]:
        """The correct continuation's tokens."""
        return self.continuation_ids[self.answer]

    def training_pair(self) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` for the correct continuation; prompt tokens masked with -100."""
        target = list(self.gold_ids)
        return list(self.prompt_ids) + target, [-100] * len(self.prompt_ids) + target


def build_request(example: MCExample, template: PromptTemplate, formulation: Formulation) -> Request:
    if formulation == "letter":
        letters = tuple(f" {LETTERS[i]}" for i in range(len(example.choices)))
        return Request(template.letter(example), letters, example.answer)
    return Request(template.cloze(example), tuple(f" {choice}" for choice in example.choices), example.answer)


def encode_requests(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[Request],
    max_length: int,
) -> list[EncodedRequest]:
    """Tokenize prompt and continuations separately; truncate the prompt from the left to fit.

    All prompts go to the tokenizer in one call and all continuations in another: a fast tokenizer
    encodes a list in Rust, the same ids as one call per string at a fraction of the per-call overhead.
    """
    if not requests:
        return []
    prompts = tokenizer([r.prompt for r in requests])["input_ids"]
    flat = tokenizer([c for r in requests for c in r.continuations], add_special_tokens=False)["input_ids"]
    encoded, start = [], 0
    for request, prompt_ids in zip(requests, prompts):
        conts = tuple(tuple(ids) for ids in flat[start:start + len(request.continuations)])
        start += len(request.continuations)
        room = max_length - max(len(c) for c in conts)
        if len(prompt_ids) > room:
            prompt_ids = prompt_ids[len(prompt_ids) - max(room, 1):]
        encoded.append(EncodedRequest(
            prompt_ids=tuple(prompt_ids),
            continuation_ids=conts,
            continuation_chars=tuple(max(len(c.strip()), 1) for c in request.continuations),
            answer=request.answer,
        ))
    return encoded
