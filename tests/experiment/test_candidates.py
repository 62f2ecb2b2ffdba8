"""How many candidates each target has: one count, with selection's own filter, for the runner and the report."""

from __future__ import annotations

import shutil

import pytest

from mashup.errors import MashupError
from mashup.experiment import plan_experiment
from mashup.experiment.plan import plan_units
from mashup.experiment.report import missing_units
from mashup.experiment.store import ResultStore
from mashup.library import Library
from tests.experiment.helpers import TASKS, tiny_config, write_tasks
from tests.experiment.synthetic import as_records, record, two_task_config


@pytest.fixture()
def library_with_a_gone_checkpoint(tmp_path, tiny_loras):
    """Sources for beta and gamma, and one whose files were removed after registration (selection skips it)."""
    library = Library(tmp_path / "lib")
    copies = [shutil.copytree(path, tmp_path / "adapters" / path.name) for path in tiny_loras]
    for path, task in zip(copies, ("beta", "gamma", "other")):
        library.add([path], task=task)
    shutil.rmtree(copies[2])
    return library


def test_a_given_librarys_candidates_are_counted_with_selections_filter(tmp_path, tiny_base,
                                                                        library_with_a_gone_checkpoint):
    config = tiny_config(tiny_base, write_tasks(tmp_path), tmp_path / "out",
                         library=str(library_with_a_gone_checkpoint.directory),
                         arms=["scratch", "mashup_loss", "oracle"], samples_sweep=[], merge_grid=None)
    ids = [p.unit.id for p in plan_experiment(config)]
    oracles = {task: sum(i.startswith(f"merge/{task}/oracle:") for i in ids) for task in TASKS}
    assert oracles == {"alpha": 2, "beta": 1, "gamma": 1}  # C(usable, k=1): the gone checkpoint is no candidate
    with pytest.raises(MashupError, match="k=2") as error:  # beta and gamma have one usable source each
        plan_experiment(config.model_copy(update={"k": 2}))
    assert "lower k" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_one_count_serves_the_runner_and_the_report():
    from mashup.experiment.sources import candidate_counts

    assert candidate_counts(two_task_config()) == {"arc_easy": 1, "sciq": 1}  # leave-one-out: the other tasks
    given = two_task_config(library="lib")
    ranked = record("select", "arc_easy", "samples:16", {"ranking": [{"id": "a"}, {"id": "b"}, {"id": "c"}]})
    assert candidate_counts(given, records=as_records(ranked)) == {"arc_easy": 3, "sciq": 0}  # 0: not selected yet


def test_missing_units_does_not_read_again_the_records_it_is_given(tmp_path, monkeypatch):
    config = two_task_config(out=str(tmp_path))
    store = ResultStore(tmp_path)
    planned = [u.id for units in plan_units(config, {"arc_easy": 1, "sciq": 1}).values() for u in units]
    records = {unit_id: {"unit": unit_id} for unit_id in planned[:-1]}
    with store.open():
        for unit_id, item in records.items():
            store.write(unit_id, item)
    checked: list[str] = []
    real = ResultStore.unreadable
    monkeypatch.setattr(ResultStore, "unreadable", lambda self, unit_id: checked.append(unit_id) or real(self, unit_id))
    assert missing_units(store, config, records) == ([planned[-1]], len(planned))
    assert checked == [planned[-1]]  # only the unit without a record is looked for on disk


def test_a_given_library_short_for_a_grid_k_is_refused_before_anything_runs(tmp_path, tiny_base,
                                                                          library_with_a_gone_checkpoint):
    config = tiny_config(tiny_base, write_tasks(tmp_path), tmp_path / "out",
                         library=str(library_with_a_gone_checkpoint.directory), samples_sweep=[],
                         merge_grid={"methods": ["average"], "k": [1, 2]}, k=1)
    with pytest.raises(MashupError, match="k=2") as error:  # beta and gamma have one usable source each
        plan_experiment(config)
    assert "merge_grid" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_left_out_is_warned_about_once_not_once_per_target(tmp_path, tiny_base, caplog,
                                                                          library_with_a_gone_checkpoint):
    config = tiny_config(tiny_base, write_tasks(tmp_path), tmp_path / "out",
                         library=str(library_with_a_gone_checkpoint.directory),
                         arms=["scratch", "mashup_loss"], samples_sweep=[], merge_grid=None, k=1)
    with caplog.at_level("WARNING", logger="mashup.candidates"):
        plan_experiment(config)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 1 and "stale" in skipped[0], skipped  # 3 targets, one warning


def test_a_named_base_not_converted_yet_counts_a_library_registered_under_its_dir(tmp_path, tiny_base, monkeypatch,
                                                                                  library_with_a_gone_checkpoint):
    """The count matches records by content, as the selection job does once the base is converted: by spelling
    alone, 'tiny-named' never matched the dir the library's adapters were registered on."""
    from mashup import named_models

    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))  # nothing converted there yet
    monkeypatch.setitem(named_models.NAMED_MODELS, "tiny-named", named_models.NAMED_MODELS["smollm2-135m"])
    converted: list[str] = []
    monkeypatch.setattr(named_models, "materialize_named_model", lambda name: converted.append(name) or tiny_base)
    config = tiny_config("tiny-named", write_tasks(tmp_path), tmp_path / "out",
                         library=str(library_with_a_gone_checkpoint.directory),
                         arms=["scratch", "mashup_loss", "oracle"], samples_sweep=[], merge_grid=None)
    ids = [p.unit.id for p in plan_experiment(config)]
    oracles = {task: sum(i.startswith(f"merge/{task}/oracle:") for i in ids) for task in TASKS}
    assert oracles == {"alpha": 2, "beta": 1, "gamma": 1} and converted == ["tiny-named"]


def test_a_named_base_that_cannot_be_converted_is_counted_by_name(tmp_path, monkeypatch, caplog):
    """Planning does not fail on a conversion its first unit would report anyway: records match by spelling."""
    from mashup import named_models
    from mashup.experiment.sources import selection_base_identity

    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))

    def no_gguf(name):
        raise MashupError("the gguf package is needed to convert", None, "pip install gguf")

    monkeypatch.setattr(named_models, "materialize_named_model", no_gguf)
    assert selection_base_identity("smollm2-135m") is None
    assert "counting candidates by base name only: the gguf package is needed" in caplog.text
