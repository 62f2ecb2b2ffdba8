"""An adapter trained on the model inside a causal LM (``AutoModel``: LlamaModel, no LM head) names its modules
without the causal LM's ``model.``: PEFT loads none of its tensors onto the causal LM (it warns of missing keys and
leaves the adapter at its init). Refused in one line that names the prefix and gives a command whose copy
registers and loads as the adapter did on the model it was trained on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mashup.errors import CheckpointError
from mashup.library import Library
from mashup.library.base_shapes import require_model_modules
from tests.library.helpers import refused


@pytest.fixture(scope="module")
def inner_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(1)
    model = get_peft_model(AutoModel.from_pretrained(tiny_base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("inner") / "adapter"
    model.save_pretrained(out)
    return out


def _hidden(model, adapter_on_inner_model: bool) -> torch.Tensor:
    with torch.no_grad():
        tokens = torch.tensor([[1, 2, 3, 4]])
        if adapter_on_inner_model:
            return model(tokens).last_hidden_state
        return model(tokens, output_hidden_states=True).hidden_states[-1]


def test_an_adapter_of_the_inner_model_is_refused_with_a_command_whose_copy_registers_and_loads(
        tmp_path, tiny_base, inner_adapter):
    from peft import PeftModel
    from transformers import AutoModel, AutoModelForCausalLM

    error = refused(Library(tmp_path / "lib"), [inner_adapter], "adapter module layers.0.self_attn.q_proj is not a "
                    "module of the model base .* builds, but model.layers.0.self_attn.q_proj is: the adapter was saved "
                    r"from the model inside it \(AutoModel, no LM head\)")
    assert error.where == str(inner_adapter) and "another transformers version" not in error.fix
    command = error.fix.split("and register that: ", 1)[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(command, shell=True, check=True, env=env)
    copy = Path(f"{inner_adapter}-model")
    again = subprocess.run(command, shell=True, env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "FileExistsError" in again.stderr, "a second run leaves the copy as it is"
    (record,) = Library(tmp_path / "lib").add([copy])
    assert record.shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [4, 32]
    expected = _hidden(PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), inner_adapter), True)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), copy)
    assert torch.allclose(_hidden(loaded, False), expected, atol=1e-6)


def test_peft_loads_none_of_its_tensors_onto_the_causal_lm(tiny_base, inner_adapter):
    """Why it is refused: PEFT warns and leaves the random init this adapter was saved with."""
    from peft import PeftModel
    from transformers import AutoModel, AutoModelForCausalLM

    expected = _hidden(PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), inner_adapter), True)
    with pytest.warns(UserWarning, match="Found missing adapter keys"):
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), inner_adapter)
    assert not torch.allclose(_hidden(loaded, False), expected, atol=1e-3)


def test_it_is_refused_alike_where_peft_loads_it_and_where_the_slots_take_it(tiny_base, inner_adapter):
    from mashup.models import attach_adapter, load_model

    match = "but model.layers.0.self_attn.q_proj is: the adapter was saved from the model inside it"
    with pytest.raises(CheckpointError, match=match) as caught:
        attach_adapter(load_model(tiny_base), inner_adapter, trainable=False)
    assert caught.value.where == str(inner_adapter) and "shutil.copytree" in caught.value.fix
    with pytest.raises(CheckpointError, match=match) as caught:
        require_model_modules({"layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"}, load_model(tiny_base),
                              str(inner_adapter))


def test_without_its_weights_file_the_fix_says_what_to_rename(tmp_path, tiny_base):
    from mashup.models import load_model

    with pytest.raises(CheckpointError, match="is: the adapter was saved") as caught:
        require_model_modules({"layers.0.self_attn.q_proj"}, load_model(tiny_base), str(tmp_path))
    assert caught.value.fix == ("rename its tensors base_model.model.NAME to base_model.model.model.NAME in "
                                "adapter_model.safetensors and register that")


def test_the_prefix_is_the_shortest_under_which_every_module_is_the_models():
    from mashup.library.base_shapes import inner_prefix

    holders = {"model.language_model.layers.0.q", "model.language_model.layers.1.q", "model.vision.layers.0.q",
               "layers.0.q", "x.layers.1.q"}
    assert inner_prefix({"layers.0.q", "layers.1.q"}, holders) == "model.language_model."
    assert inner_prefix({"layers.0.q"}, holders) == "model.vision."
    assert inner_prefix({"layers.2.q"}, holders) is None and inner_prefix(set(), holders) is None
