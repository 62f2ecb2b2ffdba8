"""Selection leaves out, before scoring anything, the checkpoints the merge would refuse, with reasons."""

import pytest

from mashup.selection.scores import ScoreStore
from mashup.config import DataConfig, MergeConfig, SelectConfig
from mashup.errors import LibraryError
from mashup.library import Library
from mashup.verbs import select
from tests.tiny import save_fresh_init, save_tiny_lora


@pytest.fixture()
def scored(monkeypatch):
    """Ids of the checkpoints selection actually scores."""
    ids: list[str] = []
    real = ScoreStore.store  # every freshly computed score passes through it (cached or not)
    monkeypatch.setattr(ScoreStore, "store",
                        lambda self, requests, scores: ids.extend(r.id for r, _ in scores)
                        or real(self, requests, scores))
    return ids


def _select(tmp_path, tiny_base, mc_file, merge, k=2):
    return select(str(tiny_base), DataConfig(data=str(mc_file), scoring="letter", max_length=96),
                  SelectConfig(samples=6, k=k), tmp_path / "lib", merge=merge)


def test_task_vectors_from_another_init_are_left_out_in_ab_mode_but_not_in_delta(tmp_path, tiny_base, tiny_loras,
                                                                                   mc_file, scored):
    library = Library(tmp_path / "lib")
    shared = save_fresh_init(tiny_base, tmp_path / "init0.safetensors", seed=0)
    other = save_fresh_init(tiny_base, tmp_path / "init1.safetensors", seed=1)
    majority = library.add(tiny_loras[:2], init_reference=shared)
    outsider = library.add(tiny_loras[2:], init_reference=other)[0]
    result = _select(tmp_path, tiny_base, mc_file, MergeConfig(method="task_arithmetic", lora_mode="ab"))
    assert sorted(scored) == sorted(r.id for r in majority)
    reason = next(r["reason"] for r in result.rejected if r["id"] == outsider.id)
    assert "init reference" in reason
    scored.clear()
    # in delta mode every zero-B init is the zero reference, so all three can be merged together
    result = _select(tmp_path, tiny_base, mc_file, MergeConfig(method="task_arithmetic", lora_mode="delta"), k=3)
    assert len(result.ranking) == 3 and scored == [outsider.id] and result.rejected == []


def test_other_ranks_are_left_out_in_ab_mode_and_kept_in_delta_mode(tmp_path, tiny_base, tiny_loras, mc_file, scored):
    library = Library(tmp_path / "lib")
    library.add(tiny_loras[:2])
    rank2 = library.add([save_tiny_lora(tiny_base, tmp_path / "rank2", seed=9, r=2)])[0]
    result = _select(tmp_path, tiny_base, mc_file, MergeConfig(method="average"))  # ab by default
    assert rank2.id not in scored and "rank" in next(r["reason"] for r in result.rejected if r["id"] == rank2.id)
    scored.clear()
    result = _select(tmp_path, tiny_base, mc_file, MergeConfig(method="ties"), k=3)  # delta by default
    assert scored == [rank2.id] and len(result.ranking) == 3 and result.rejected == []


def test_too_few_usable_checkpoints_is_one_line_naming_what_was_left_out(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                           scored):
    library = Library(tmp_path / "lib")
    library.add(tiny_loras[:1], task="target")  # mc_file's name: trained on the target
    library.add(tiny_loras[1:2])
    with pytest.raises(LibraryError, match="k=2 but 1 usable lora checkpoint.*1 trained on the target"):
        _select(tmp_path, tiny_base, mc_file, MergeConfig())
    assert scored == []


def test_library_add_trained_on_records_the_datas_fingerprint(tmp_path, tiny_base, tiny_loras, mc_file, scored,
                                                             capsys, monkeypatch):
    from tests.test_cli import run_cli

    lib = tmp_path / "lib"
    run_cli(["library", "add", tiny_loras[0], "--trained-on", mc_file, "--library", lib], capsys, monkeypatch)
    run_cli(["library", "add", *tiny_loras[1:], "--library", lib], capsys, monkeypatch)
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_text(mc_file.read_text())
    leaked = Library(lib).list()[0]
    result = select(str(tiny_base), DataConfig(data=str(copy), scoring="letter", max_length=96),
                    SelectConfig(samples=6, k=2), lib)
    assert [e["id"] for e in result.excluded] == [leaked.id] and leaked.id not in scored


def test_a_shortage_for_the_kind_names_the_option_that_ranks_the_other_kind(tmp_path, tiny_base, tiny_fulls,
                                                                            mc_file, scored):
    Library(tmp_path / "lib").add(tiny_fulls, base=str(tiny_base))
    with pytest.raises(LibraryError, match=r"0 usable lora checkpoint.*3 of kind full.*--kind full") as error:
        _select(tmp_path, tiny_base, mc_file, MergeConfig())
    assert "incompatible" not in str(error.value) and scored == []


def test_a_shortage_names_no_kind_option_when_no_other_kind_was_left_out(tmp_path, tiny_base, tiny_loras, mc_file):
    Library(tmp_path / "lib").add(tiny_loras[:1])
    with pytest.raises(LibraryError, match="k=2 but 1 usable lora") as error:
        _select(tmp_path, tiny_base, mc_file, MergeConfig())
    assert "--kind" not in str(error.value)


def test_no_kind_hint_for_other_kind_checkpoints_the_target_leaves_out_anyway(tmp_path, tiny_base, tiny_fulls,
                                                                             mc_file):
    from mashup.data.target import load_target

    target = load_target(DataConfig(data=str(mc_file), scoring="letter", max_length=96))
    Library(tmp_path / "lib").add(tiny_fulls, base=str(tiny_base), task=target.name)  # trained on the target
    with pytest.raises(LibraryError, match="0 usable lora") as error:
        _select(tmp_path, tiny_base, mc_file, MergeConfig())
    assert "--kind full" not in str(error.value)  # under --kind full they would be left out as well
