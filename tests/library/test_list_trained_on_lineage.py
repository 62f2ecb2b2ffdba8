"""`library list --trained-on T` lists what selection leaves out for T: a checkpoint trained on T itself (its task or
data fingerprint), or through a checkpoint it was merged from, at any depth; a hand-made lineage cannot crash it."""

from __future__ import annotations

from types import SimpleNamespace

from mashup.candidates import trained_on
from mashup.library import Library
from tests.library.helpers import many_adapters


def test_trained_on_follows_merged_from_as_selection_does(tmp_path, tiny_loras):
    paths = many_adapters(tiny_loras[0], tmp_path / "runs", 5)
    library = Library(tmp_path / "lib")
    source = library.add(paths[:1], task="sciq")[0]  # registered with its task alone, as `library add --task`
    merged = library.add(paths[1:2], lineage={"merged_from": [source.id]})[0]
    run = library.add(paths[2:3], task="arc", lineage={"merged_from": [merged.id], "trained_on": {"task": "arc"}})[0]
    library.add(paths[3:4], task="arc", data_fingerprint="ab" * 32)
    listed = [r.id for r in library.list(trained_on="sciq")]
    assert listed == [source.id, merged.id, run.id]
    target = SimpleNamespace(name="sciq", fingerprint="f" * 64)
    by_id = {r.id: r for r in library.list()}
    assert [i for i, r in by_id.items() if trained_on(r, target, by_id)] == listed  # type: ignore[arg-type]
    assert len(library.list(trained_on="ababab")) == 1 and [r.id for r in library.list(trained_on="sciq",
                                                                                        kind="lora")] == listed


def test_a_hand_made_lineage_is_read_as_saying_nothing(tmp_path, tiny_loras):
    library = Library(tmp_path / "lib")
    odd = library.add(tiny_loras[:1], lineage={"trained_on": "sciq", "merged_from": "sciq"})[0]
    plain = library.add(tiny_loras[1:2], task="sciq")[0]
    assert [r.id for r in library.list(trained_on="sciq")] == [plain.id] and odd.id != plain.id


def test_a_trained_on_task_or_file_lists_what_was_added_with_it(tmp_path, tiny_loras, capsys, monkeypatch):
    """`library add --trained-on FILE` records the data's fingerprint (no task): `library list --trained-on` of that
    file (any copy of its rows) lists it, as selection for that target leaves it out."""
    import json

    from tests.conftest import write_mc_jsonl
    from tests.test_cli import run_cli

    data = write_mc_jsonl(tmp_path / "foo.jsonl", 20)
    lib = tmp_path / "lib"
    out, _ = run_cli(["library", "add", tiny_loras[0], "--trained-on", data, "--library", lib, "--json"], capsys,
                     monkeypatch)
    (added,) = json.loads(out)
    run_cli(["library", "add", tiny_loras[1], "--library", lib], capsys, monkeypatch)
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_text(data.read_text())
    for wanted in (str(data), str(copy)):
        out, _ = run_cli(["library", "list", "--trained-on", wanted, "--library", lib, "--json"], capsys,
                         monkeypatch)
        assert [r["id"] for r in json.loads(out)] == [added], wanted


def test_a_trained_on_name_that_is_also_a_dir_here_is_a_name(tmp_path, tiny_loras, capsys, monkeypatch):
    """An adapter dir named after its task (or any dir that is no data) is not read as data: the name is matched."""
    import json
    import shutil

    from tests.test_cli import run_cli

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_loras[0], tmp_path / "mytask")
    (tmp_path / "mathqa").mkdir()  # a task without its offline copy, beside a dir of its name: nothing fetched
    lib = tmp_path / "lib"
    out, _ = run_cli(["library", "add", "mytask", "--task", "mytask", "--library", lib, "--json"], capsys, monkeypatch)
    for wanted, expected in (("mytask", json.loads(out)), ("./mytask", []), ("mathqa", []), (".", [])):
        out, _ = run_cli(["library", "list", "--trained-on", wanted, "--library", lib, "--json"], capsys, monkeypatch)
        assert [r["id"] for r in json.loads(out)] == expected, wanted
