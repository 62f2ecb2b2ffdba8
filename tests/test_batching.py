import random

import pytest
import torch

from mashup.batching import (
    ScoredSequence,
    Stacking,
    collate,
    continuation_logprobs,
    last_token_logprobs,
    length_batches,
    shared_prefix_logprobs,
    stacked_batches,
)
from mashup.models import load_model


def _reference_sum(model, prompt, cont):
    """Sum of log p(cont | prompt) from one unpadded forward pass over the whole sequence."""
    ids = torch.tensor([list(prompt) + list(cont)])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(prompt) + j - 1, tok].item() for j, tok in enumerate(cont))


def test_left_padded_continuations_match_unpadded_forward(tiny_base):
    model = load_model(tiny_base).eval()
    seqs = [((5, 6, 7, 8, 9), (10, 11)), ((12, 13), (14,)), ((3, 4, 5, 6, 7, 8, 9), (20, 21, 22))]
    batch = collate([ScoredSequence(p + c, len(c)) for p, c in seqs], 0, torch.device("cpu"))
    with torch.no_grad():
        logprobs, mask = continuation_logprobs(model, batch)
        for row, (prompt, cont) in enumerate(seqs):
            assert int(mask[row].sum()) == len(cont)
            assert abs(logprobs[row].sum().item() - _reference_sum(model, prompt, cont)) < 1e-4


def test_log_softmax_in_row_chunks_changes_no_bit(tiny_base, monkeypatch):
    """The float32 log-softmax runs on row chunks to bound memory; each row's numbers are its own."""
    import mashup.batching as batching

    model = load_model(tiny_base).eval()
    seqs = [((5, 6, 7, 8, 9), (10, 11)), ((12, 13), (14,)), ((3, 4, 5, 6, 7, 8, 9), (20, 21, 22))]
    batch = collate([ScoredSequence(p + c, len(c)) for p, c in seqs], 0, torch.device("cpu"))
    with torch.no_grad():
        whole, mask = continuation_logprobs(model, batch, copies=2)
        monkeypatch.setattr(batching, "LOGIT_CHUNK_ELEMENTS", 1)  # one row per chunk
        chunked, chunked_mask = continuation_logprobs(model, batch, copies=2)
    assert torch.equal(whole, chunked) and torch.equal(mask, chunked_mask)
    assert whole.shape == (6, 3)


def test_shared_prefix_scores_equal_full_sequences(tiny_base):
    model = load_model(tiny_base).eval()
    prompts = [(5, 6, 7, 8, 9), (12, 13)]
    conts = [[(10, 11), (14,), (20, 21, 22)], [(30,), (31, 32), (33, 34, 35, 36)]]
    with torch.no_grad():
        sums = shared_prefix_logprobs(model, prompts, conts, 0, torch.device("cpu"))
        for i, prompt in enumerate(prompts):
            for c, cont in enumerate(conts[i]):
                assert abs(sums[i, c].item() - _reference_sum(model, prompt, cont)) < 1e-4


def test_last_token_logprobs_ignore_left_padding(tiny_base):
    model = load_model(tiny_base).eval()
    batch = collate([ScoredSequence((5, 6, 7), 1), ScoredSequence((5, 6, 7, 8, 9, 10), 1)], 0, torch.device("cpu"))
    with torch.no_grad():
        got = last_token_logprobs(model, batch)
        alone = torch.log_softmax(model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1], dim=-1)
    assert torch.allclose(got[0], alone, atol=1e-5)


def test_length_batches_give_a_long_tail_its_own_batch():
    lengths = [10] * 15 + [100]
    batches = length_batches(range(16), lengths, batch_size=16)
    assert batches == [list(range(15)), [15]]  # 16 rows padded to 100 would be 10x the median's budget


def test_length_batches_keep_order_rows_and_budget():
    rng = random.Random(0)
    lengths = [rng.choice([5, 8, 12, 40, 90]) for _ in range(200)]
    order = sorted(range(200), key=lengths.__getitem__)
    batches = length_batches(order, lengths, batch_size=16)
    assert [i for batch in batches for i in batch] == order
    budget = 16 * sorted(lengths)[100]
    for batch in batches:
        assert 1 <= len(batch) <= 16
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget
    assert length_batches([], [], 4) == []


def _stacked_work(batches: list[list[int]], lengths: list[int], stacking: Stacking) -> float:
    group = stacking.adapters
    fixed = stacking.fixed_share * stacking.rows * sorted(lengths)[len(lengths) // 2]
    forwards = [-(-group // max(1, min(group, stacking.rows // len(b)))) for b in batches]
    return sum(f * fixed + group * len(b) * max(lengths[i] for i in b) for f, b in zip(forwards, batches))


@pytest.mark.parametrize("share", [0.0, 0.05, 1.0, 50.0])
def test_stacked_batches_are_the_least_work_of_all_cuts(share):
    """Against every way to cut 9 length-sorted rows into consecutive batches of at most 4."""
    lengths = [3, 3, 4, 7, 8, 8, 12, 30, 31]
    order = list(range(len(lengths)))
    stacking = Stacking(rows=16, adapters=8, fixed_share=share)
    got = stacked_batches(order, lengths, 4, stacking)
    assert [i for batch in got for i in batch] == order and max(map(len, got)) <= 4

    def cuts(start: int):
        if start == len(order):
            yield []
        for stop in range(start + 1, min(len(order), start + 4) + 1):
            for rest in cuts(stop):
                yield [order[start:stop], *rest]

    least = min(_stacked_work(c, lengths, stacking) for c in cuts(0))
    assert _stacked_work(got, lengths, stacking) == pytest.approx(least)
    if share == 0.0:  # nothing but padding counts: only equal lengths share a batch
        assert all(len({lengths[i] for i in batch}) == 1 for batch in got)
    if share == 50.0:  # forwards count most: as few as any cut makes (a batch of 4 rows takes 2, of 2 takes 1)
        forwards = lambda batches: sum(-(-8 // min(8, 16 // len(b))) for b in batches)  # noqa: E731
        assert forwards(got) == min(forwards(c) for c in cuts(0)) == 5


def test_stacked_batches_of_nothing():
    assert stacked_batches([], [], 4, Stacking(16, 2, 1.0)) == []
