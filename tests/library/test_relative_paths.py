"""Records hold local paths absolute, so a later command from another working directory finds what they name."""

import json
import shutil
import socket
import sqlite3

import pytest

from mashup.library import Library
from tests.library.helpers import noisy_copy
from tests.test_cli import run_cli
from tests.tiny import save_fresh_init


@pytest.fixture()
def trial(tmp_path, tiny_base, tiny_loras, tiny_fulls, monkeypatch):
    """A user's working dir with relative assets: a base, an adapter naming it relatively, its init, full models."""
    cwd = tmp_path / "trial"
    assets = cwd / "assets"
    shutil.copytree(tiny_base, assets / "base")
    noisy_copy(tiny_loras[0], assets / "adapters" / "c", seed=3, base_model_name_or_path="assets/base")
    save_fresh_init(tiny_base, assets / "init.safetensors", seed=4)
    for i, full in enumerate(tiny_fulls[:2]):
        shutil.copytree(full, assets / f"full{i}")
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_relative_init_and_base_are_stored_absolute(trial, tmp_path):
    library = Library(tmp_path / "lib")
    lora = library.add(["assets/adapters/c"], init_reference="assets/init.safetensors")[0]
    fulls = library.add(["assets/full0", "assets/full1"], base="assets/base")
    assert lora.init_reference == str(trial / "assets" / "init.safetensors")
    assert {r.base_model for r in [lora, *fulls]} == {str(trial / "assets" / "base")}
    assert library.get(lora.id).init_reference == lora.init_reference  # as stored, not only as returned
    assert library.get(fulls[0].id).base_model == str(trial / "assets" / "base")
    assert all(r.base_identity for r in [lora, *fulls])


def test_a_symlinked_init_keeps_its_name(trial, tmp_path):
    """As in the HF cache: the named file links to a blob without the .safetensors suffix a reference needs."""
    blob = trial / "blobs" / "0123abcd"
    blob.parent.mkdir()
    (trial / "assets" / "init.safetensors").rename(blob)
    (trial / "assets" / "init.safetensors").symlink_to(blob)
    record = Library(tmp_path / "lib").add(["assets/adapters/c"], init_reference="./assets/init.safetensors")[0]
    assert record.init_reference == str(trial / "assets" / "init.safetensors")


def test_named_bases_and_hub_ids_stay_as_given(trial, tmp_path, tiny_loras, no_network, monkeypatch):
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    (trial / "smollm2-135m").mkdir()  # a dir of that name here does not turn the named model into a path
    named = noisy_copy(tiny_loras[0], trial / "named", seed=5, base_model_name_or_path="smollm2-135m")
    hub = noisy_copy(tiny_loras[0], trial / "hub", seed=6, base_model_name_or_path="some-org/model")
    records = Library(tmp_path / "lib").add([named, hub])
    assert [r.base_model for r in records] == ["smollm2-135m", "some-org/model"]


def test_base_filters_match_any_spelling_of_the_stored_path(trial, tmp_path):
    library = Library(tmp_path / "lib")
    records = library.add(["assets/full0"], base="assets/base")
    for spelling in ("assets/base", "./assets/base/", str(trial / "assets" / "base")):
        assert [r.id for r in library.list(base=spelling)] == [records[0].id], spelling
    (trial / "elsewhere").mkdir()
    assert library.list(base="elsewhere") == []


def test_old_records_with_relative_paths_still_load_and_match(trial, tmp_path):
    library = Library(tmp_path / "lib")
    record = library.add(["assets/full0"], base="assets/base")[0]
    with sqlite3.connect(library.db_path) as conn:  # as an older version recorded them
        conn.execute("UPDATE checkpoints SET base_model = 'assets/base', init_reference = 'assets/init.safetensors'")
    old = library.get(record.id)
    assert (old.base_model, old.init_reference) == ("assets/base", "assets/init.safetensors"), "no migration"
    assert [r.id for r in library.list(base=str(trial / "assets" / "base"))] == [record.id]
    assert [r.id for r in library.list(base="assets/base")] == [record.id]


def test_cli_merges_from_another_working_dir(trial, tmp_path, capsys, monkeypatch, no_network):
    """The trial: checkpoints added with relative paths, merged from another dir."""
    lib = tmp_path / "lib"
    lora = json.loads(run_cli(["library", "add", "assets/adapters/c", "--init", "assets/init.safetensors",
                               "--library", lib, "--json"], capsys, monkeypatch)[0])
    fulls = json.loads(run_cli(["library", "add", "assets/full0", "assets/full1", "--base", "assets/base",
                                "--library", lib, "--json"], capsys, monkeypatch)[0])
    out, _ = run_cli(["library", "show", lora[0], "--library", lib], capsys, monkeypatch)
    assert f"init       {trial / 'assets' / 'init.safetensors'}" in out
    monkeypatch.chdir(tmp_path)
    run_cli(["merge", "--checkpoints", lora[0], "--method", "task_arithmetic", "--out", tmp_path / "m-lora",
             "--library", lib], capsys, monkeypatch)
    run_cli(["merge", *[x for i in fulls for x in ("--checkpoints", i)], "--out", tmp_path / "m-full",
             "--library", lib], capsys, monkeypatch)
    assert (tmp_path / "m-lora" / "adapter_model.safetensors").exists()
    assert (tmp_path / "m-full" / "config.json").exists()


def test_a_missing_init_reference_is_refused_at_registration(tmp_path, tiny_loras, capsys, monkeypatch):
    _, err = run_cli(["library", "add", tiny_loras[0], "--init", tmp_path / "typo.safetensors", "--library",
                      tmp_path / "lib"], capsys, monkeypatch, expect=1)
    assert "init reference not found" in err and "typo.safetensors" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "lib" / "catalog.sqlite").exists()  # nothing registered, no library made
