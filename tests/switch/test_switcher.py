"""The switcher's prompt, its digit readout and its training examples; rewards; confidence intervals."""

from __future__ import annotations

import copy

import pytest
import torch

from mashup.switch.generation import Segment
from mashup.switch.rewards import ChoiceCloze, final_number, same_number
from mashup.switch.switcher import QUESTION, Switcher, encode_choice, switcher_request, switcher_text
from mashup.switch.evaluate import wilson_interval
from mashup.switch.tasks import SwitchTask, choice_item
from mashup.data.prompts import PromptTemplate
from mashup.data.schema import MCExample

SEGMENTS = [Segment(0, " The sun", 2), Segment(2, " is hot.", 3)]


def test_the_prompt_is_the_papers() -> None:
    text = switcher_text("Q?", SEGMENTS, 3)
    assert text == ("Q? <model 0 begins>  The sun <model 0 ends> <model 2 begins>  is hot. <model 2 ends>"
                    " Which model should generate the next segment? Please respond with a number from 0 to 2."
                    " The answer is model")
    assert QUESTION.endswith("The answer is model")


def test_each_digit_is_one_token_after_the_prompt(trio) -> None:
    for c in trio[:2]:
        prompt, digits = encode_choice(c.tokenizer, "Which one? The answer is model", 3)
        for i, digit in enumerate(digits):
            assert list(c.tokenizer(f"Which one? The answer is model {i}")["input_ids"]) == prompt + [digit]


@pytest.mark.fp32
def test_digit_readout_picks_the_argmax_index(trio) -> None:
    model, tokenizer = trio[0].model, trio[0].tokenizer
    switcher = Switcher(model, tokenizer, 3, device=torch.device("cpu"))
    prompt, digits = encode_choice(tokenizer, switcher_text("Q?", SEGMENTS, 3), 3)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    probs = switcher.probabilities("Q?", SEGMENTS)
    assert torch.allclose(probs, logits[digits].softmax(-1), atol=1e-5)
    assert switcher("Q?", SEGMENTS, 1) == int(logits[digits].argmax())
    assert switcher.forwarded == 2 * len(prompt)  # one forward pass per decision
    steered = copy.deepcopy(model)
    with torch.no_grad():  # point digit 1's output row along the last hidden state: its logit dominates
        hidden = steered.model(torch.tensor([prompt])).last_hidden_state[0, -1]
        steered.lm_head.weight[digits[1]] = 100 * hidden / hidden.norm()
    assert Switcher(steered, tokenizer, 3)("Q?", SEGMENTS, 1) == 1


def test_top_p_sampling_stays_in_the_nucleus_and_is_seeded(trio) -> None:
    switcher = Switcher(trio[0].model, trio[0].tokenizer, 3, top_p=1e-6, seed=3)
    assert switcher("Q?", SEGMENTS, 1) == int(switcher.probabilities("Q?", SEGMENTS).argmax())
    sampler = Switcher(trio[0].model, trio[0].tokenizer, 3, top_p=1.0, seed=3)
    assert [sampler("Q?", SEGMENTS, s) for s in range(6)] == [sampler("Q?", SEGMENTS, s) for s in range(6)]


def test_a_training_example_scores_only_the_label_digit(trio) -> None:
    request = switcher_request(trio[0].tokenizer, "Q?", SEGMENTS, 3, label=2)
    prompt, digits = encode_choice(trio[0].tokenizer, switcher_text("Q?", SEGMENTS, 3), 3)
    assert request.prompt_ids == tuple(prompt) and request.single_token
    ids, labels = request.training_pair()
    assert ids == prompt + [digits[2]] and [x for x in labels if x != -100] == [digits[2]]


@pytest.mark.parametrize("text, number", [
    ("4 * 8 = 32. So the answer is 32.", "32"), ("The answer is 1,234 dollars, not 7", "1234"),
    ("we get 5 then 7", "7"), ("no digits", None), ("The answer is -3.5", "-3.5"),
    ("the answer is x. Later 12", "12"),
])
def test_final_number(text: str, number: str | None) -> None:
    assert final_number(text) == number


def test_same_number_compares_values() -> None:
    assert same_number("18.0", "18") and same_number("1234", "1,234") and not same_number(None, "1")
    assert not same_number("17", "18")


def test_choice_cloze_reward_binary_and_margin_agree(trio) -> None:
    example = MCExample("Which is a colour?", ("red", "dog", "run"), 0)
    task = SwitchTask("t", "choice", [], [], PromptTemplate())
    item = choice_item(example)
    binary = ChoiceCloze(trio[0], task, margin=False)(item, " It is red.")
    margin = ChoiceCloze(trio[0], task, margin=True)(item, " It is red.")
    assert binary.reward in (0.0, 1.0) and binary.correct == margin.correct
    assert binary.reward == float(binary.correct)
    assert margin.reward != binary.reward  # a log-likelihood difference, not a 0/1


def test_wilson_interval() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_number_closeness_is_dense_and_keeps_exact_match_as_correct() -> None:
    from mashup.switch.rewards import NumberCloseness
    from mashup.switch.tasks import number_item

    item = number_item("What is 4 * 8?", "32")
    exact, near, far, none = (NumberCloseness()(item, t) for t in ("The answer is 32", "33", "320", "no idea"))
    assert exact.reward == 1.0 and exact.correct and not near.correct
    assert 1.0 > near.reward > far.reward > none.reward == 0.0
