"""The Switch Generation loop: candidates take turns writing fixed-size segments of one response.

Whoever writes a segment is decided by a chooser (the switcher, a fixed candidate, random, a script);
the aligned candidate writes the first and last segments when ``aligned_ends`` is set. Segment ``s`` is
sampled with a generator seeded from ``(seed, s)`` whoever writes it: candidates compared on the same
segment draw the same random numbers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from mashup.switch.candidates import Candidate, Sampler, Stream
from mashup.switch.config import GenerationConfig


@dataclass(frozen=True)
class Segment:
    writer: int
    text: str
    tokens: int


@dataclass
class SwitchTrace:
    """A response, who wrote each segment, and what it cost."""

    query: str
    segments: list[Segment]
    forwarded: list[int]  # tokens run through each candidate
    chooser_tokens: int = 0  # tokens run through the switcher
    seconds: float = 0.0
    ended: bool = False  # a writer emitted EOS
    reencoded: int = 0  # tokens a loop without caches would run (re-encoding prompt and response per segment)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def writers(self) -> list[int]:
        return [s.writer for s in self.segments]

    def to_dict(self) -> dict:
        return {"query": self.query, "text": self.text, "segments": [asdict(s) for s in self.segments],
                "forwarded": self.forwarded, "chooser_tokens": self.chooser_tokens,
                "seconds": round(self.seconds, 3), "ended": self.ended, "reencoded": self.reencoded}


# (query, segments so far, segment index) -> the index of the candidate that writes the next segment
Chooser = Callable[[str, Sequence[Segment], int], int]


def fixed(index: int) -> Chooser:
    return lambda query, segments, step: index


def random_chooser(n_candidates: int, seed: int) -> Chooser:
    """Uniform over candidates; its draws depend only on the seed and the order of calls."""
    rng = random.Random(seed)
    return lambda query, segments, step: rng.randrange(n_candidates)


def segment_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class Plan:
    """How many segments a response has and which of them the aligned candidate writes."""

    config: GenerationConfig
    aligned: int | None
    n_segments: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_segments = self.config.n_segments

    def forced(self, step: int) -> int | None:
        ends = step == 0 or step == self.n_segments - 1
        return self.aligned if self.config.aligned_ends and ends else None


def switch_generate(candidates: Sequence[Candidate], query: str, chooser: Chooser, plan: Plan, *,
                    seed: int | None = None, prefix: Sequence[Segment] = (), stop_after: int | None = None,
                    chooser_cost: Callable[[], int] | None = None) -> SwitchTrace:
    """Generate segments ``len(prefix) .. stop_after-1`` (default: to the plan's end or EOS).

    ``prefix`` is text already written (as in the collect rollouts); each candidate reads it on its
    first turn. ``chooser_cost`` reports the switcher's forwarded tokens, for the cost accounting.
    """
    start = time.perf_counter()
    seed = plan.config.seed if seed is None else seed
    sampler = Sampler(plan.config)
    streams: list[Stream | None] = [None] * len(candidates)
    segments = list(prefix)
    response = "".join(s.text for s in segments)
    ended = False
    reencoded = 0
    for step in range(len(segments), min(stop_after or plan.n_segments, plan.n_segments)):
        forced = plan.forced(step)
        writer = forced if forced is not None else chooser(query, segments, step)
        stream = streams[writer] = streams[writer] or Stream(candidates[writer], query)
        stream.catch_up(response)
        before = len(stream.ids)
        text, tokens, ended = stream.write(plan.config.segment_budget(step), sampler, segment_generator(seed, step))
        reencoded += before + max(tokens + ended - 1, 0)
        segments.append(Segment(writer, text, tokens))
        response += text
        if ended:
            break
    forwarded = [s.forwarded if s else 0 for s in streams]
    return SwitchTrace(query, segments, forwarded, chooser_cost() if chooser_cost else 0,
                       time.perf_counter() - start, ended, reencoded)


def logit_average_generate(candidates: Sequence[Candidate], query: str, plan: Plan, *,
                           seed: int | None = None) -> SwitchTrace:
    """Every token from the mean of the candidates' next-token distributions (one shared vocabulary)."""
    start = time.perf_counter()
    seed = plan.config.seed if seed is None else seed
    sampler = Sampler(plan.config)
    streams = [Stream(c, query) for c in candidates]
    eos = frozenset().union(*(c.eos_ids for c in candidates))
    first = len(streams[0].ids)
    ended = False
    generated = 0
    for step in range(plan.n_segments):  # segments only set the seeds here, as in switch_generate
        generator = segment_generator(seed, step)
        for _ in range(plan.config.segment_budget(step)):
            logprobs = torch.stack([s.next_logits().log_softmax(-1) for s in streams])
            token = sampler(torch.logsumexp(logprobs, 0) - torch.log(torch.tensor(float(len(streams)))), generator)
            if token in eos:
                ended = True
                break
            for s in streams:
                s.ids.append(token)
            generated += 1
        if ended:
            break
    text = streams[0].decode_from(first)
    forwarded = [s.forwarded for s in streams]  # no switching: a loop without caches would run the same
    return SwitchTrace(query, [Segment(-1, text, generated)], forwarded, seconds=time.perf_counter() - start,
                       ended=ended, reencoded=sum(forwarded))
