"""Bad base models and base config.json files met where eval loads them: one CheckpointError line naming the
dir or file at fault and the fix."""

import json

import pytest

from mashup.errors import CheckpointError
from mashup.models import load_model
from mashup.verbs import evaluate_model
from tests.bad_models import (
    copy_dir,
    data_config,
    eval_error,
    pickled_base,
    with_config,
)

UNKNOWN_ARCHITECTURE = "architecture 'nonsense_arch' (model_type) is not known to the installed transformers"
CUSTOM_CODE = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}


@pytest.mark.parametrize("hub_id", ["nobody/no-such-model", "Qwen/Qwen2.5-0.5B"])  # a dot is no file suffix
def test_a_hub_base_that_cannot_be_fetched_is_one_line(tiny_base, mc_file, hub_id, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nAn error happened "
                                      "while trying to locate the files on the Hub.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, base=hub_id)
    assert f"cannot get base model '{hub_id}' from the Hugging Face Hub" in err
    assert "free disk space" not in err and "local model dir" in err


@pytest.mark.parametrize("base", ["org/bad name", "models/llama.gguf", "a/b/c"])
def test_a_base_that_is_neither_a_dir_nor_a_hub_id_is_one_line(tiny_base, mc_file, base, capsys, monkeypatch):
    assert f"unknown base model '{base}'" in eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)



def test_a_base_without_tokenizer_files_is_one_line(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    base = copy_dir(tiny_base, tmp_path / "notok")
    for path in base.iterdir():
        if "token" in path.name:
            path.unlink()
    assert "cannot load the tokenizer" in eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)


def test_a_base_config_that_is_not_json_says_so(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    base = copy_dir(tiny_base, tmp_path / "badconfig")
    (base / "config.json").write_text("{oops")
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert "config.json is not valid JSON" in err and str(base / "config.json") in err



def test_a_pickle_only_base_needs_allow_pickle_and_then_works(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    base = pickled_base(tiny_base, tmp_path / "bin-base")
    assert "refusing to unpickle" in eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)
    allowed = evaluate_model(str(base), data_config(mc_file), allow_pickle=True)
    assert allowed.loss == pytest.approx(evaluate_model(str(tiny_base), data_config(mc_file)).loss)


def test_a_pickle_only_base_of_an_unknown_architecture_is_one_line(tmp_path, tiny_base, mc_file, capsys,
                                                                    monkeypatch):
    """Counted from its config (no safetensors headers to count): said as the load would say it."""
    base = pickled_base(tiny_base, tmp_path / "bin-base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "nonsense_arch"}))
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, "--allow-pickle", base=base)
    assert UNKNOWN_ARCHITECTURE in err and f"in {base / 'config.json'};" in err



# audit 5: a base config.json with a wrong-typed field, of other shapes, of another architecture


def test_an_architecture_transformers_does_not_know_is_said_as_such(tmp_path, tiny_base, mc_file, capsys,
                                                                    monkeypatch):
    """Not "invalid model config ... fix that value": no value of config.json is wrong for a newer transformers."""
    import transformers

    base = with_config(tiny_base, tmp_path / "unknown", model_type="nonsense_arch")
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert f"{UNKNOWN_ARCHITECTURE} {transformers.__version__} in {base / 'config.json'};" in err
    assert "upgrade transformers" in err and "invalid model config" not in err


@pytest.mark.parametrize(("change", "auto_map"), [
    ({"model_type": "x_arch", "auto_map": CUSTOM_CODE}, "AutoConfig, AutoModelForCausalLM"),  # no config class
    ({"model_type": "t5", "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, "AutoModelForCausalLM"),  # no model
])
def test_a_config_that_needs_the_models_own_code_says_mashup_does_not_run_it(tmp_path, tiny_base, mc_file, capsys,
                                                                             monkeypatch, change, auto_map):
    base = with_config(tiny_base, tmp_path / "custom", **change)
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert f"config.json needs the model's own code (auto_map: {auto_map}), and mashup does not run a model's own " \
           f"code (trust_remote_code) in {base / 'config.json'};" in err
    assert "invalid model config" not in err and "pass the argument" not in err


def test_an_auto_map_on_an_architecture_transformers_ships_is_no_fault_of_its_own(tmp_path, tiny_base, mc_file,
                                                                                 capsys, monkeypatch):
    """transformers uses its own class there: a wrong-typed field is still that field's fault."""
    base = with_config(tiny_base, tmp_path / "typed", auto_map=CUSTOM_CODE, hidden_size="32")
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert "invalid model config" in err and "'hidden_size' expected int" in err and "own code" not in err
    assert load_model(with_config(tiny_base, tmp_path / "fine", auto_map=CUSTOM_CODE)) is not None


def test_a_wrong_typed_base_config_field_is_one_line_naming_field_and_file(tmp_path, tiny_base, mc_file, capsys,
                                                                           monkeypatch):
    base = with_config(tiny_base, tmp_path / "typed", hidden_size="32")
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)
    assert "invalid model config" in err and "'hidden_size' expected int" in err
    assert f"in {base / 'config.json'};" in err and "fix that value" in err


@pytest.mark.parametrize("change", [{"vocab_size": -1}, {"hidden_act": "nope"}, {"num_hidden_layers": 1.5}])
def test_a_config_no_model_can_be_built_from_is_named_by_load_model(tmp_path, tiny_base, change):
    base = with_config(tiny_base, tmp_path / "unbuildable", **change)
    with pytest.raises(CheckpointError, match="invalid model config") as caught:
        load_model(base)
    assert caught.value.where == str(base / "config.json")


@pytest.mark.parametrize("pickled", [False, True])
def test_a_config_of_other_shapes_than_the_weights_is_one_line(tmp_path, tiny_base, mc_file, pickled, capsys,
                                                               monkeypatch):
    """A config that builds a model, but one the saved weights do not fit (transformers raised after a table); a
    pickle has no header to compare, so the load itself must say so."""
    saved = pickled_base(tiny_base, tmp_path / "bin") if pickled else tiny_base
    base = with_config(saved, tmp_path / "fewer_heads", num_key_value_heads=1)
    err = eval_error(tiny_base, mc_file, capsys, monkeypatch, *(["--allow-pickle"] if pickled else []), base=base)
    assert "weight model.layers.0.self_attn.k_proj.weight has shape [16, 32] but config.json makes it [8, 32]" in err
    assert f"in {base};" in err


def test_a_tied_head_of_another_vocab_size_is_one_line_too(tmp_path, tiny_base):
    """With tied embeddings transformers failed on meta tensors, before any size check of its own."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_base)
    config.tie_word_embeddings = True
    base = tmp_path / "tied"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    with_config(base, tmp_path / "tied_wider", vocab_size=config.vocab_size + 100)
    with pytest.raises(CheckpointError, match="weight model.embed_tokens.weight has shape") as caught:
        load_model(tmp_path / "tied_wider")
    assert caught.value.where == str(tmp_path / "tied_wider")


def test_a_config_with_fewer_layers_than_the_weights_is_refused(tmp_path, tiny_base):
    """transformers left the extra layers out with a note on stderr: a truncated model loaded."""
    base = with_config(tiny_base, tmp_path / "one_layer", num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"weight\(s\) in the checkpoint that config.json has no place for "
                                              r"\(e.g. model.layers.1."):
        load_model(base)


def test_a_model_type_that_is_no_causal_lm_is_said_as_such(tmp_path, tiny_base):
    """Not "fix that value": a T5 config is valid, just not a causal LM."""
    base = with_config(tiny_base, tmp_path / "t5", model_type="t5", architectures=["T5ForConditionalGeneration"])
    with pytest.raises(CheckpointError, match="model_type 't5' is not a causal language model"):
        load_model(base)


def test_a_load_failure_the_config_does_not_explain_still_raises(tmp_path, tiny_base, monkeypatch):
    """Only the config's own failures become a CheckpointError: a bug in loading is not hidden behind one."""
    from transformers import AutoModelForCausalLM

    def bug(*args, **kwargs):
        raise TypeError("a bug in loading")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", bug)
    with pytest.raises(TypeError, match="a bug in loading"):
        load_model(tiny_base)



def _tied_copy(tiny_base, dst, head=None):
    """A tied copy of the (untied) base: config.json says so, and the head saved is ``head`` ("embeddings": equal to
    the embeddings, "own": the base's own head, None: none saved)."""
    from safetensors.torch import load_file, save_file

    base = with_config(tiny_base, dst, tie_word_embeddings=True)
    tensors = load_file(base / "model.safetensors")
    if head == "embeddings":
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    elif head is None:
        del tensors["lm_head.weight"]
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    return base


def test_an_untied_head_under_a_config_that_ties_it_is_one_line(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    """transformers left the saved head untied with a warning we silence, against the config that says tied."""
    base = _tied_copy(tiny_base, tmp_path / "edited", head="own")
    with pytest.raises(CheckpointError, match=r"its lm_head.weight differs from model.embed_tokens.weight, which "
                                              r"its config.json ties it to \(tie_word_embeddings\)") as caught:
        load_model(base)
    assert caught.value.where == str(base) and "set tie_word_embeddings to false" in caught.value.fix
    capsys.readouterr()  # the direct load's progress bar
    assert "tie_word_embeddings" in eval_error(tiny_base, mc_file, capsys, monkeypatch, base=base)


@pytest.mark.parametrize("head", ["embeddings", None])
def test_a_tied_checkpoint_loads_with_or_without_its_head_saved(tmp_path, tiny_base, head):
    model = load_model(_tied_copy(tiny_base, tmp_path / "tied", head=head))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_a_model_dir_without_config_json_says_so(tmp_path, tiny_base):
    """Not "invalid model config ... fix that value" naming a config.json that is not there."""
    base = copy_dir(tiny_base, tmp_path / "noconfig")
    (base / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json in ") as caught:
        load_model(base)
    assert caught.value.where == str(base)


def test_a_failed_load_builds_the_configs_model_once(tmp_path, tiny_base, monkeypatch):
    """To find whether config.json is at fault (it parses, builds, and makes the saved shapes here)."""
    from transformers import AutoModelForCausalLM

    from mashup import model_checks

    def unloadable(*args, **kwargs):
        raise ValueError("cannot load this")

    built, build = [], model_checks.model_on_meta
    monkeypatch.setattr(model_checks, "model_on_meta", lambda model_dir: built.append(model_dir) or build(model_dir))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", unloadable)
    with pytest.raises(CheckpointError, match=r"cannot load model \(cannot load this\)"):
        load_model(tiny_base)
    assert built == [tiny_base]


@pytest.mark.parametrize(("weights", "config", "said"), [
    (False, {}, "no weight files"), (True, [1, 2], "config.json is not a JSON object")])
def test_a_base_dir_a_load_would_refuse_is_refused_before_any_work(tmp_path, tiny_base, weights, config, said):
    """What an experiment's preflight checks: the library's rule for a base dir, with a fix in the config's words."""
    from mashup.models import check_base_available

    base = copy_dir(tiny_base, tmp_path / "base")
    if not weights:
        (base / "model.safetensors").unlink()
    if config:
        (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=said) as caught:
        check_base_available(str(base))
    assert caught.value.where == str(base.absolute()) and "point base at an HF model dir" in caught.value.fix
    check_base_available(str(tiny_base))


def test_a_pickle_only_base_is_refused_before_any_work(tmp_path, tiny_base):
    """An experiment loads safetensors only (no --allow-pickle), though the library registers against such a base."""
    from mashup.models import check_base_available

    base = copy_dir(tiny_base, tmp_path / "base")
    (base / "model.safetensors").rename(base / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle .* refusing to unpickle") as caught:
        check_base_available(str(base))
    assert caught.value.where == str(base.absolute()) and "convert them to safetensors" in caught.value.fix


def test_a_composite_config_untied_at_the_top_loads(tmp_path):
    """Gemma-3's composite config: untied at the top level (which transformers goes by), its text_config left at
    the default that ties: transformers keeps the saved head, and so does our check."""
    from transformers import AutoModelForCausalLM, Gemma3Config

    config = Gemma3Config(
        text_config=dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298,
        tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma3")
    model = load_model(tmp_path / "gemma3")
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
