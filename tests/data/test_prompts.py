"""Prompt encoding: one tokenizer call per list gives the ids one call per string gives, truncated on the left."""

from __future__ import annotations

from mashup.data.prompts import Request, encode_requests
from tests.tiny import build_tokenizer

REQUESTS = [
    Request("Question: what is the answer to the question below?\nAnswer:", (" yes", " no", " maybe so"), 1),
    Request("Context: a short one.\nQuestion: which?\nAnswer:", (" the first choice", " the second"), 0),
    Request("Answer:", (" a",), 0),
]


def _one_call_per_string(tokenizer, request: Request, max_length: int) -> tuple[tuple[int, ...], tuple]:
    prompt = tokenizer(request.prompt)["input_ids"]
    conts = tuple(tuple(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in request.continuations)
    room = max_length - max(len(c) for c in conts)
    return tuple(prompt[len(prompt) - max(room, 1):] if len(prompt) > room else prompt), conts


def test_batched_encoding_equals_one_call_per_string_with_left_truncation():
    tokenizer = build_tokenizer()
    for max_length in (512, 12, 3):
        encoded = encode_requests(tokenizer, REQUESTS, max_length)
        for request, got in zip(REQUESTS, encoded):
            prompt, conts = _one_call_per_string(tokenizer, request, max_length)
            assert (got.prompt_ids, got.continuation_ids, got.answer) == (prompt, conts, request.answer)
    short = encode_requests(tokenizer, REQUESTS, 12)
    assert short[0].prompt_ids[-1] == encode_requests(tokenizer, REQUESTS, 512)[0].prompt_ids[-1], "kept the end"
    assert encode_requests(tokenizer, [], 64) == []
