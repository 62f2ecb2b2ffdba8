"""The switch loop on tiny models: KV-cache prefill, seeding, aligned ends, mixed tokenizers, logit averaging."""

from __future__ import annotations

import torch

from mashup.switch.candidates import Sampler, Stream
from mashup.switch.generation import Plan, Segment, fixed, logit_average_generate, random_chooser, switch_generate
from tests.switch.helpers import candidate, generation

QUERY = "Question: Which is a colour?"


def test_incremental_prefill_matches_re_encoding_the_whole_text(tiny_base, other_base) -> None:
    # fp32: the comparison is with a plain fp32 forward pass at fp32 tolerance
    aligned = candidate(tiny_base, "aligned", "aligned", precision="fp32")
    other = candidate(other_base, "pretrained", "other", precision="fp32")
    for writer, reader in ((aligned, other), (other, aligned)):
        response = ""
        foreign = Stream(writer, QUERY)
        stream = Stream(reader, QUERY)
        for _ in range(3):  # the reader writes, then catches up on the other's text, and again
            text, _, _ = stream.write(3, _greedy(), None)
            response += text
            foreign.catch_up(response)
            more, _, _ = foreign.write(3, _greedy(), None)
            response += more
            stream.catch_up(response)
            incremental = stream.next_logits()
            with torch.no_grad():
                whole = reader.model(torch.tensor([stream.ids])).logits[0, -1]
            assert torch.allclose(incremental, whole, atol=1e-5)
        assert stream.forwarded == len(stream.ids)  # every token ran through the model exactly once


def _greedy() -> Sampler:
    return Sampler(generation())


def test_a_lone_writer_generates_exactly_as_plain_greedy_decoding(trio) -> None:
    aligned = trio[0]
    trace = switch_generate(trio, QUERY, fixed(0), Plan(generation(aligned_ends=False), 0))
    prompt = aligned.prompt_ids(QUERY)
    with torch.no_grad():
        reference = aligned.model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                           eos_token_id=None, pad_token_id=aligned.pad_id)[0, len(prompt):]
    assert trace.text == aligned.tokenizer.decode(reference)
    assert trace.forwarded[0] == len(prompt) + 16 - 1 and trace.forwarded[1:] == [0, 0]


def test_the_loop_is_deterministic_under_a_seed(trio) -> None:
    plan = Plan(generation(do_sample=True, temperature=0.9, top_p=0.95), 0)
    runs = [switch_generate(trio, QUERY, random_chooser(3, 7), plan, seed=seed) for seed in (11, 11, 12)]
    assert runs[0].text == runs[1].text and runs[0].writers == runs[1].writers
    assert runs[0].text != runs[2].text


def test_first_and_last_segments_go_to_the_aligned_role(trio) -> None:
    plan = Plan(generation(segment_tokens=3, max_new_tokens=15), aligned=0)
    asked: list[int] = []

    def never_aligned(query, segments, step):
        asked.append(step)
        return 1

    trace = switch_generate(trio, QUERY, never_aligned, plan)
    assert trace.writers == [0, 1, 1, 1, 0]
    assert asked == [1, 2, 3]  # the chooser is not consulted for the forced ends
    unaligned = Plan(plan.config.model_copy(update={"aligned_ends": False}), 0)
    unforced = switch_generate(trio, QUERY, never_aligned, unaligned)
    assert unforced.writers == [1] * 5


def test_candidates_with_different_tokenizers_share_the_text(trio) -> None:
    aligned, other = trio[0], trio[1]
    assert aligned.tokenizer.get_vocab() != other.tokenizer.get_vocab()
    assert other.chat and not aligned.chat
    assert other.prompt_ids(QUERY) == other.encode(f"<|user|>{QUERY}\n<|assistant|>")
    script = [0, 1, 0, 1]
    trace = switch_generate(trio, QUERY, lambda q, s, step: script[step], Plan(generation(aligned_ends=False), 0))
    assert trace.writers == script
    assert trace.text == "".join(s.text for s in trace.segments)
    assert all(s.tokens == 4 for s in trace.segments)
    # the other candidate read the aligned one's first segment in its own tokens before writing
    stream = Stream(other, QUERY)
    stream.catch_up(trace.segments[0].text)
    assert stream.ids == other.prompt_ids(QUERY) + other.encode(trace.segments[0].text)


def test_a_prefix_is_read_like_text_written_before(trio) -> None:
    plan = Plan(generation(), 0)
    full = switch_generate(trio, QUERY, random_chooser(3, 2), plan, seed=5)
    resumed = switch_generate(trio, QUERY, random_chooser(3, 2), plan, seed=5, prefix=full.segments[:1],
                              stop_after=2)
    assert resumed.segments[0] == full.segments[0] and len(resumed.segments) == 2


def test_logit_averaging_of_one_model_with_itself_is_that_model(trio) -> None:
    aligned = trio[0]
    plan = Plan(generation(aligned_ends=False), None)
    alone = switch_generate([aligned], QUERY, fixed(0), plan)
    averaged = logit_average_generate([aligned, aligned], QUERY, plan)
    assert averaged.text == alone.text
    assert averaged.segments == [Segment(-1, alone.text, 16)]


def test_switching_runs_far_fewer_tokens_than_re_encoding_each_segment(trio) -> None:
    plan = Plan(generation(segment_tokens=2, max_new_tokens=16), 0)
    trace = switch_generate(trio, QUERY, random_chooser(3, 4), plan, seed=1)
    lone = switch_generate(trio, QUERY, fixed(0), Plan(generation(segment_tokens=2, aligned_ends=False), 0))
    assert sum(lone.forwarded) == len(trio[0].prompt_ids(QUERY)) + 16 - 1  # one model: prompt + generation
    assert lone.reencoded > sum(lone.forwarded)  # without its cache it would re-run its context 8 times
    assert sum(trace.forwarded) < trace.reencoded
