"""Crash safety: a run killed (SIGKILL) or failing part-way resumes to exactly the uninterrupted results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import mashup
from mashup.experiment import run_experiment
from mashup.experiment import jobs as jobs_module
from mashup.experiment.report import current_records
from mashup.experiment.store import RESULT, ResultStore, hash_outputs, unit_file_name
from tests.experiment.helpers import comparable, tiny_config, write_tasks

SMALL = dict(arms=["scratch", "mashup_loss", "mashup_accuracy", "mashup_random", "mashup_at_init"],
             samples_sweep=[4], merge_grid=None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("resume")
    tasks = write_tasks(root)
    reference = tiny_config(tiny_base, tasks, root / "reference", **SMALL)
    run_experiment(reference)
    return tiny_base, tasks, comparable(current_records(ResultStore(reference.out), reference))


def _nothing_half_finished(out: Path) -> None:
    """Every visible artifact is complete and every record's outputs are intact."""
    store = ResultStore(out)
    for artifact in store.artifacts_dir.iterdir():
        if not artifact.name.startswith("."):
            assert (artifact / RESULT).is_file(), f"{artifact} looks finished but is not"
    for unit, record in store.records().items():
        assert hash_outputs(store.artifact(record["artifact"])) == record["outputs"], unit


def test_sigkill_part_way_then_resume_redoes_only_unfinished_units(setup, tmp_path):
    base, tasks, expected = setup
    config = tiny_config(base, tasks, tmp_path / "out", **SMALL)
    config_file = tmp_path / "experiment.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mashup.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "mashup", "experiment", str(config_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = tmp_path / "out" / "units"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if units.is_dir() and len(list(units.glob("*.json"))) >= 12:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    _nothing_half_finished(tmp_path / "out")
    before = set(ResultStore(tmp_path / "out").records())
    assert 12 <= len(before) < len(expected)

    resumed = run_experiment(config)
    assert before <= set(resumed.already_done)
    assert not before & set(resumed.computed + resumed.reused)
    assert comparable(current_records(ResultStore(config.out), config)) == expected
    assert not list((tmp_path / "out" / "artifacts").glob(".*"))  # the killed run's temp dirs are gone


def test_a_unit_failing_mid_way_leaves_nothing_and_the_rerun_matches(setup, tmp_path, monkeypatch):
    base, tasks, expected = setup
    config = tiny_config(base, tasks, tmp_path / "out", **SMALL)
    train, calls = jobs_module._RUNNERS["train"], []

    def failing_train(job, tmp):
        calls.append(job)
        result = train(job, tmp)  # the unit's files are all written ...
        if len(calls) == 5:
            raise RuntimeError("injected failure")  # ... and it fails before it is finished
        return result

    monkeypatch.setitem(jobs_module._RUNNERS, "train", failing_train)
    with pytest.raises(RuntimeError, match="injected"):
        run_experiment(config)
    _nothing_half_finished(tmp_path / "out")
    failed = calls[-1]
    assert not (tmp_path / "out" / "artifacts" / failed.artifact).exists()
    monkeypatch.setitem(jobs_module._RUNNERS, "train", train)
    resumed = run_experiment(config)
    assert resumed.computed and resumed.already_done
    assert comparable(current_records(ResultStore(config.out), config)) == expected


def test_a_second_concurrent_run_in_the_same_dir_is_refused(setup, tmp_path):
    from mashup.errors import MashupError

    base, tasks, _ = setup
    config = tiny_config(base, tasks, tmp_path / "out", **SMALL)
    with ResultStore(config.out).open(), pytest.raises(MashupError, match="another `mashup experiment` is running"):
        run_experiment(config)


def test_opening_the_store_clears_every_trace_of_a_killed_run_at_once(tmp_path):
    from mashup.atomic_dir import OWNER_SUFFIX, TMP_MARK, make_owned_temp

    store = ResultStore(tmp_path / "out")
    store.artifacts_dir.mkdir(parents=True)
    store.units_dir.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    half_written = make_owned_temp(store.artifact("train-a"))  # the killed run's temp dir ...
    owner = half_written.with_name(half_written.name + OWNER_SUFFIX)
    owner.write_text(owner.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {killed.pid}'))
    (store.artifacts_dir / f".train-b{TMP_MARK}0badf00d{OWNER_SUFFIX}").touch()  # ... killed mid-record, just now
    (store.units_dir / ".unit-c.x.tmp").write_text("{")
    with store.open():
        left = [*store.artifacts_dir.iterdir(), *store.units_dir.iterdir()]
    assert left == []


def test_a_rerun_that_does_not_finish_leaves_no_old_report(setup, tmp_path, monkeypatch):
    """A finished dir run again (say with more seeds) and stopped part-way: the earlier report would read as this
    config's, so it goes when the rerun starts; the next finished run writes the new one."""
    base, tasks, _ = setup
    config = tiny_config(base, tasks, tmp_path / "out", **SMALL)
    run_experiment(config)
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "results.json").is_file()

    def failing(job, tmp):
        raise RuntimeError("stopped")

    monkeypatch.setitem(jobs_module._RUNNERS, "train", failing)
    with pytest.raises(RuntimeError, match="stopped"):
        run_experiment(tiny_config(base, tasks, tmp_path / "out", **{**SMALL, "seeds": 3}))
    assert not (tmp_path / "out" / "report.md").exists() and not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(("content", "problem"), [(b'{"unit": ', "Expecting value"), (b"[1, 2]", "not a unit record"),
                                                  (b'{"key": "k"}', "not a unit record"), (b"{}", "not a unit record"),
                                                  (b'{"status": "done"}', "not a unit record"),
                                                  (b'{"unit": "unit-a", "key": "k"}', "fields: field required"),
                                                  (b"\xff\xfe garbage", "can't decode")])
def test_a_hand_edited_unit_record_is_redone_and_named_by_the_report_check(tmp_path, content, problem, caplog):
    """One reading for both: a resumed run redoes the unit (with a warning), the report names the problem."""
    store = ResultStore(tmp_path)
    with store.open():
        store.write("unit-a", {"unit": "unit-a", "key": "k"})
    (store.units_dir / unit_file_name("unit-a")).write_bytes(content)
    assert store.record("unit-a") is None and store.valid_record("unit-a", "k") is None
    assert problem in store.unreadable("unit-a") and "will be redone" in caplog.text
    assert store.record("unit-b") is None and store.unreadable("unit-b") is None and "unit-b" not in caplog.text


def test_a_record_in_another_units_file_is_no_record_of_either(tmp_path):
    record = {"unit": "eval/alpha/base", "key": "k", "artifact": "eval-0", "outputs": {}, "seconds": 1.0,
              "fields": {"phase": "base", "kind": "eval", "task": "alpha", "arm": "base", "seed": None, "lr": None},
              "result": {"test": {"accuracy": 0.5, "loss": 1.0, "n": 4, "seconds": 0.1}}}
    store = ResultStore(tmp_path)
    with store.open():
        store.write("eval/alpha/base", record)
    assert store.record("eval/alpha/base") == record and store.unreadable("eval/alpha/base") is None
    (store.units_dir / unit_file_name("eval/alpha/base")).rename(store.units_dir / unit_file_name("eval/beta/base"))
    assert store.record("eval/beta/base") is None and store.records() == {}
    assert "it names unit 'eval/alpha/base'" in store.unreadable("eval/beta/base")
