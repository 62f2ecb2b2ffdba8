import json

from mashup.config import HalvingConfig, max_share_option
from mashup.library import Library
from mashup.progress import selection_summary
from mashup.selection import factors
from tests.test_cli import run_cli


def test_select_cli_with_halving_then_a_free_repeat(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    Library(tmp_path / "lib").add(tiny_loras)
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib", "--samples", 12,
            "--scoring", "letter", "--selector", "halving", "--halving-min-samples", 4, "--halving-factor", 2, "--json"]
    out, err = run_cli(args, capsys, monkeypatch)
    first = json.loads(out)
    assert first["stats"]["selector"] == "halving" and first["stats"]["scored"] > 0
    assert "of exhaustive forward tokens" in err
    out, err = run_cli(args, capsys, monkeypatch)
    again = json.loads(out)
    assert "nothing was scored (0 forward tokens)" in err
    assert again["selected"] == first["selected"] and again["stats"]["forward_tokens"] == 0


def test_select_cli_rejects_unknown_selector_and_executor(tmp_path, tiny_base, tiny_loras, mc_file, capsys,
                                                          monkeypatch):
    Library(tmp_path / "lib").add(tiny_loras[:2])
    base = ["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib"]
    _, err = run_cli([*base, "--selector", "greedy"], capsys, monkeypatch, expect=2)
    assert "selector" in err and "Traceback" not in err
    _, err = run_cli([*base, "--executor", "dask"], capsys, monkeypatch, expect=2)
    assert "executor" in err and "Traceback" not in err
    _, err = run_cli([*base, "--selector", "halving", "--halving-max-share", "a tenth"], capsys, monkeypatch, expect=1)
    assert "invalid --halving-max-share 'a tenth'" in err and "auto or none" in err


def test_the_summary_line_names_a_cap_that_held():
    stats = {"selector": "halving", "executor": "local", "scored": 1000, "cached": 0, "forward_tokens": 92,
             "probe_tokens": 0, "cost_ratio": 0.092}
    assert selection_summary({**stats, "token_cap": 0.1}).endswith("9.2% of exhaustive forward tokens (cap 10%)")
    assert selection_summary({**stats, "token_cap": None}).endswith("9.2% of exhaustive forward tokens")


def test_the_halving_cap_option_takes_a_share_auto_or_none():
    assert max_share_option(None) == {}  # unset: the config's default (auto)
    assert max_share_option("0.1") == {"max_share": 0.1}
    assert max_share_option(" Auto ") == {"max_share": "auto"}
    assert max_share_option("none") == {"max_share": None}
    assert HalvingConfig(**max_share_option("none")).max_share is None


def test_the_ranking_table_shows_the_first_rows_and_says_how_to_see_all(tmp_path, tiny_base, tiny_loras, mc_file,
                                                                         capsys, monkeypatch):
    Library(tmp_path / "lib").add(tiny_loras)
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib", "--samples", 8,
            "--scoring", "letter"]
    out, _ = run_cli([*args, "--rows", 2], capsys, monkeypatch)
    ids = json.loads(run_cli([*args, "--json"], capsys, monkeypatch)[0])["ranking"]
    assert [r["id"] in out for r in ids] == [True, True, False]
    assert "the first 2 of 3 ranked: --rows 0 or --json for all" in " ".join(out.split())
    out, _ = run_cli([*args, "--rows", 0], capsys, monkeypatch)
    assert all(r["id"] in out for r in ids) and "--rows 0" not in out


def test_select_cli_sets_the_prefilter(tmp_path, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    Library(tmp_path / "lib").add(tiny_loras)
    args = ["select", "--base", tiny_base, "--data", mc_file, "--library", tmp_path / "lib", "--samples", 8,
            "--scoring", "letter", "--selector", "prefilter+halving", "--no-cache", "--json"]
    default = json.loads(run_cli(args, capsys, monkeypatch)[0])["stats"]
    assert default["prefiltered_out"] == 0  # 3 candidates: under the default min_keep (32), all are kept
    # keep 1 with --k 1: the prefilter never keeps fewer than k
    arrow = [*args, "--k", 1, "--prefilter-keep", 1, "--prefilter-min-keep", 1, "--prefilter-signals", "arrow"]
    first = json.loads(run_cli(arrow, capsys, monkeypatch)[0])
    assert first["stats"]["prefiltered_out"] == 2 and first["stats"]["probe_tokens"] > 0

    def no_read(*args, **kwargs):
        raise AssertionError("a candidate's factors were read")

    # --no-cache rescoring still uses the prototypes, which are keyed by the weights' bytes and cannot be stale
    monkeypatch.setattr(factors.FactorReader, "read", no_read)
    again = json.loads(run_cli(arrow, capsys, monkeypatch)[0])
    assert again["selected"] == first["selected"] and again["stats"]["probe_tokens"] > 0
    monkeypatch.undo()
    _, err = run_cli([*args, "--prefilter-signals", "arrow,embeddings"], capsys, monkeypatch, expect=2)
    assert "signals" in err and "Traceback" not in err
