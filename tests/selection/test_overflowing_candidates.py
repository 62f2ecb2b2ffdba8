"""An adapter whose forward overflows (finite weights, float32's largest B factors) in the places a review found
it broke: the prefilter's signals, halving's plan once every survivor is NaN, the cached accuracy of a NaN loss,
and scores cached before NaN choices stopped counting as predictions."""

import json
import math

import pytest
import torch

from mashup.config import HalvingConfig, PrefilterConfig, SelectConfig
from mashup.io import load_weight_dir
from mashup.library import Library, score_cache
from mashup.library.score_cache import ScoreCache
from mashup.selection import select_checkpoints
from mashup.selection.arrow import prototypes_of
from mashup.selection.factors import stack_factors
from mashup.selection.prefilter import run_prefilter
from mashup.selection.scores import PrefixScore, ScoreStore
from tests.selection.helpers import records_for, requests_for
from tests.selection import test_not_finite_selection
from tests.selection.test_not_finite_selection import overflowing_copy
from tests.test_cli import run_cli
from tests.tiny import save_tiny_lora

mixed_library = test_not_finite_selection.mixed_library  # the fixture: two finite adapters and one that overflows


def test_library_scores_show_no_accuracy_for_a_loss_that_is_not_finite(tmp_path, tiny_base, mixed_library, mc_file,
                                                                       capsys, monkeypatch):
    """`select` reports no accuracy for a NaN loss: the cache keeps none either, and a repeat still reads it."""
    library, huge = mixed_library
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", library, "--samples", 16,
            "--scoring", "letter", "--metric", "accuracy", "--k", 1, "--json"]
    run_cli(args, capsys, monkeypatch)
    matrix = json.loads(run_cli(["library", "scores", "--library", library, "--metric", "accuracy", "--json"],
                                capsys, monkeypatch)[0])
    cells = {cid: next(iter(by_column.values())) for cid, by_column in matrix["cells"].items()}
    assert cells[huge]["loss"] is None and cells[huge]["accuracy"] is None
    assert all(cell["accuracy"] is not None for cid, cell in cells.items() if cid != huge)
    assert [row.accuracy for row in ScoreCache(library).entries() if row.loss is None] == [None]
    repeat = json.loads(run_cli(args, capsys, monkeypatch)[0])
    assert repeat["stats"]["cached"] == 3 and repeat["stats"]["scored"] == 0, "a NaN row without accuracy is read"


@pytest.mark.parametrize("signals", ["first_order", "arrow", "first_order,arrow"])
def test_prefilter_halving_over_an_overflowing_adapter(signals, tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                       monkeypatch, caplog):
    """Arrow has no prototype for it (its Gram matrices overflow): kept unranked with one warning, not a
    LinAlgError; the first-order estimate ranks it last. Halving then drops it."""
    fourth = save_tiny_lora(tiny_base, tmp_path / "lora3", seed=3)
    huge = overflowing_copy(tiny_loras[0], tmp_path / "huge")
    records = Library(tmp_path / "lib").add([huge, *tiny_loras, fourth])
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib", "--samples", 8,
            "--scoring", "letter", "--k", 2, "--selector", "prefilter+halving", "--prefilter-keep", 2,
            "--prefilter-min-keep", 1, "--prefilter-signals", signals, "--no-cache", "--json"]
    with caplog.at_level("WARNING"):
        result = json.loads(run_cli(args, capsys, monkeypatch)[0])
    assert records[0].id not in result["selected"] and len(result["selected"]) == 2
    said = [r.getMessage() for r in caplog.records if "the prefilter has no value" in r.getMessage()]
    ranked = {s["id"] for s in result["ranking"]}
    if "arrow" in signals:
        assert len(said) == 1 and records[0].id in said[0] and records[0].id in ranked, "kept, unranked"
    else:
        assert said == [] and records[0].id not in ranked, "the first-order estimate ranks it last: cut"


def test_signals_of_an_overflowing_adapter_never_rank_it_first(tmp_path, tiny_base, tiny_loras, mc_file):
    huge = overflowing_copy(tiny_loras[0], tmp_path / "huge")
    records = records_for([huge, *tiny_loras[1:]])
    workspace, requests = requests_for(tiny_base, mc_file, 6, "letter")
    config = PrefilterConfig(signals=["first_order", "arrow"], keep=1, min_keep=1)
    result = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "target",
                           library_dir=tmp_path / "lib")
    first_order = dict(result.values["first_order"])
    huge_value = first_order.pop(records[0].id)
    assert all(math.isfinite(v) for v in first_order.values()) and huge_value > max(first_order.values()), "last"
    assert records[0].id not in result.values["arrow"] and len(result.values["arrow"]) == 2
    assert [r.id for r in result.kept][0] == records[0].id and len(result.kept) == 2, "kept unranked, plus one"
    cached = run_prefilter(records, requests, workspace.settings(3), tiny_base, config, "target",
                           library_dir=tmp_path / "lib")
    assert [r.id for r in cached.kept] == [r.id for r in result.kept], "its NaN prototype row read back alike"


def test_prototypes_of_the_others_survive_an_eigenproblem_lapack_gives_up_on(tiny_loras, monkeypatch):
    """One adapter's eigh failing (LinAlgError; here its B scaled up, finite) leaves it without a prototype, and
    the others' as they are without it."""
    adapters = [load_weight_dir(path) for path in tiny_loras]
    adapters[1] = {name: t * 1e12 if "lora_B" in name else t for name, t in adapters[1].items()}
    modules = sorted({name.removeprefix("base_model.model.").split(".lora_")[0] for name in adapters[0]})
    expected = prototypes_of(stack_factors([adapters[0], adapters[2]], modules))
    real_eigh = torch.linalg.eigh

    def failing_eigh(matrices, *args, **kwargs):
        if matrices.abs().amax() > 1e16:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(matrices, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    got = prototypes_of(stack_factors(adapters, modules))
    for module in modules:
        assert got[module][1].isnan().all()
        dots = (got[module][[0, 2]] * expected[module]).sum(dim=1).abs()  # unit vectors, up to their sign
        assert torch.allclose(dots, torch.ones(2), atol=1e-5)


def test_halving_whose_every_candidate_is_not_finite_stops_and_ends_its_progress(tmp_path, tiny_base, tiny_loras,
                                                                                   mc_file):
    huge = [overflowing_copy(tiny_loras[i], tmp_path / f"huge{i}") for i in range(3)]
    workspace, requests = requests_for(tiny_base, mc_file, 16, "letter")
    config = SelectConfig(samples=16, k=1, selector="halving", cache=False,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=1))
    progress = []
    selection = select_checkpoints(workspace, records_for(huge), requests, config, None,
                                   progress=lambda done, planned: progress.append((done, planned)))
    assert [r.candidates for r in selection.stats.rounds] == [3], "no rounds of nobody"
    assert progress[-1] == (12, 12)
    assert len(selection.ranking) == 3 and not any(s.finite for s in selection.ranking)


def test_halving_unplans_the_work_of_a_dropped_survivor(tmp_path, tiny_base, tiny_loras, mc_file):
    """Two of five overflow where the schedule keeps four: the whole sample scores three, and progress says so."""
    huge = [overflowing_copy(tiny_loras[i], tmp_path / f"huge{i}") for i in range(2)]
    workspace, requests = requests_for(tiny_base, mc_file, 16, "letter")
    config = SelectConfig(samples=16, k=1, selector="halving", cache=False,
                          halving=HalvingConfig(min_samples=4, factor=2, min_survivors=4))
    progress = []
    select_checkpoints(workspace, records_for([*tiny_loras, *huge]), requests, config, None,
                       progress=lambda done, planned: progress.append((done, planned)))
    assert progress[-1] == (5 * 4 + 3 * 12, 5 * 4 + 3 * 12)


def test_a_score_cached_before_nan_choices_stopped_predicting_is_scored_again(tmp_path, tiny_base, tiny_loras,
                                                                              mc_file, monkeypatch):
    """Scoring version 1 read an argmax over NaN choice scores as a prediction: its accuracies are not reused."""
    _, requests = requests_for(tiny_base, mc_file, 4, "letter")
    records = records_for(tiny_loras[:1])
    store = ScoreStore(tmp_path / "lib", tiny_base)
    with monkeypatch.context() as patch:
        patch.setattr(score_cache, "SCORING_VERSION", 1)
        store.store(requests, [(records[0], PrefixScore(2.0, 3, 4))])
        assert records[0].id in store.lookup(requests, records)
    assert store.lookup(requests, records) == {}
