import pytest
import torch
from peft import PeftModel

from mashup.config import DataConfig, SelectConfig
from mashup.data import build_request, load_target, sample
from mashup.library import Library, score_cache
from mashup.models import load_model, load_tokenizer
from mashup.selection import ScoringEngine
from mashup.verbs import select


def _independent_loss(base_dir, adapter_dir, examples, template, formulation):
    """Mean over examples of the answer tokens' mean cross-entropy, one unpadded sequence at a time."""
    tokenizer = load_tokenizer(base_dir)
    model = PeftModel.from_pretrained(load_model(base_dir), adapter_dir).eval()
    losses = []
    for example in examples:
        request = build_request(example, template, formulation)
        prompt = tokenizer(request.prompt)["input_ids"]
        target = tokenizer(request.continuations[example.answer], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        token_losses = [-logprobs[len(prompt) + j - 1, t].item() for j, t in enumerate(target)]
        losses.append(sum(token_losses) / len(token_losses))
    return sum(losses) / len(losses)


def _select(tmp_path, tiny_base, tiny_loras, mc_file, scoring):
    library = Library(tmp_path / "lib")
    records = library.add(tiny_loras)
    data = DataConfig(data=str(mc_file), scoring=scoring)
    result = select(str(tiny_base), data, SelectConfig(samples=12, k=2, seed=3, batch_size=5), tmp_path / "lib")
    return records, data, result


@pytest.mark.fp32
def test_ranking_equals_independently_computed_losses(tmp_path, tiny_base, tiny_loras, mc_file):
    records, data, result = _select(tmp_path, tiny_base, tiny_loras, mc_file, "letter")
    target = load_target(data)
    examples = sample(target.train, 12, 3)
    expected = {r.id: _independent_loss(tiny_base, r.path, examples, target.template, "letter") for r in records}
    got = {s.id: s.loss for s in result.ranking}
    for checkpoint_id, loss in expected.items():
        assert abs(got[checkpoint_id] - loss) < 1e-4
    assert [s.id for s in result.ranking] == sorted(expected, key=expected.get)
    assert result.selected == [s.id for s in result.ranking[:2]]
    assert all(s.n == 12 for s in result.ranking)


@pytest.mark.fp32
def test_cloze_selection_matches_independent_losses(tmp_path, tiny_base, tiny_loras, mc_file):
    records, data, result = _select(tmp_path, tiny_base, tiny_loras, mc_file, "cloze")
    target = load_target(data)
    examples = sample(target.train, 12, 3)
    for score in result.ranking:
        record = next(r for r in records if r.id == score.id)
        assert abs(score.loss - _independent_loss(tiny_base, record.path, examples, target.template, "cloze")) < 1e-4


def test_accuracy_metric_ranks_by_accuracy(tmp_path, tiny_base, tiny_loras, mc_file):
    Library(tmp_path / "lib").add(tiny_loras)
    result = select(str(tiny_base), DataConfig(data=str(mc_file), scoring="letter"),
                    SelectConfig(samples=16, k=1, metric="accuracy"), tmp_path / "lib")
    accuracies = [s.accuracy for s in result.ranking]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(0.0 <= a <= 1.0 for a in accuracies)


def test_score_cache_scores_only_new_checkpoints(tmp_path, tiny_base, tiny_loras, mc_file, monkeypatch):
    library = Library(tmp_path / "lib")
    library.add(tiny_loras[:2])
    data = DataConfig(data=str(mc_file), scoring="letter")
    config = SelectConfig(samples=10, k=2)
    first = select(str(tiny_base), data, config, tmp_path / "lib")
    assert not any(s.cached for s in first.ranking)
    scored: list[str] = []
    real = ScoringEngine.score
    monkeypatch.setattr(ScoringEngine, "score",
                        lambda self, records, *a, **k: scored.extend(r.id for r in records)
                        or real(self, records, *a, **k))
    new = library.add([tiny_loras[2]])[0]
    second = select(str(tiny_base), data, config, tmp_path / "lib")
    assert scored == [new.id]
    by_id = {s.id: s for s in second.ranking}
    for old in first.ranking:
        assert by_id[old.id].cached and by_id[old.id].loss == old.loss and by_id[old.id].accuracy == old.accuracy
    scored.clear()
    select(str(tiny_base), data, SelectConfig(samples=10, k=2, seed=1), tmp_path / "lib")
    assert len(scored) == 3, "another sample is another fingerprint: everything is scored again"
    scored.clear()
    select(str(tiny_base), data, SelectConfig(samples=10, k=2, cache=False), tmp_path / "lib")
    assert len(scored) == 3
    scored.clear()
    monkeypatch.setattr(score_cache, "SCORING_VERSION", score_cache.SCORING_VERSION + 1)
    select(str(tiny_base), data, config, tmp_path / "lib")
    assert len(scored) == 3, "scores from another scoring version are not read"


@pytest.mark.fp32  # compares the loss-only layout with the every-choice one to fp32 precision
def test_loss_selection_scores_only_the_gold_answer_and_the_cache_knows_it(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                           monkeypatch):
    library = Library(tmp_path / "lib")
    library.add(tiny_loras)
    data = DataConfig(data=str(mc_file), scoring="cloze")
    by_loss = select(str(tiny_base), data, SelectConfig(samples=10, k=2), tmp_path / "lib")
    assert all(s.accuracy is None for s in by_loss.ranking)
    with_accuracy = select(str(tiny_base), data, SelectConfig(samples=10, k=2, with_accuracy=True, cache=False),
                           tmp_path / "lib")
    assert all(s.accuracy is not None for s in with_accuracy.ranking)
    assert by_loss.stats["exhaustive_tokens"] < with_accuracy.stats["exhaustive_tokens"]
    assert [s.id for s in by_loss.ranking] == [s.id for s in with_accuracy.ranking]
    for a, b in zip(by_loss.ranking, with_accuracy.ranking):
        assert a.loss == pytest.approx(b.loss, abs=1e-5)

    scored: list[str] = []
    real = ScoringEngine.score
    monkeypatch.setattr(ScoringEngine, "score",
                        lambda self, records, *a, **k: scored.extend(r.id for r in records)
                        or real(self, records, *a, **k))
    # the cache holds loss-only scores: a ranking by accuracy scores again and stores accuracy with them
    by_accuracy = select(str(tiny_base), data, SelectConfig(samples=10, k=2, metric="accuracy"), tmp_path / "lib")
    assert len(scored) == 3 and not any(s.cached for s in by_accuracy.ranking)
    scored.clear()
    again = select(str(tiny_base), data, SelectConfig(samples=10, k=2), tmp_path / "lib")
    assert scored == [] and all(s.cached and s.accuracy is not None for s in again.ranking)
    # a cold loss-only selection would have cost the loss-only share of the every-choice rows' seconds
    share = by_loss.stats["exhaustive_tokens"] / with_accuracy.stats["exhaustive_tokens"]
    seconds = {s.id: s.seconds for s in by_accuracy.ranking}
    assert all(s.seconds == pytest.approx(seconds[s.id] * share) and s.seconds > 0 for s in again.ranking)
