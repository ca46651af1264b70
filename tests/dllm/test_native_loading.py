"""The native loader on checkpoints t3d writes itself in each family's published layout.

These run without ../shared: `build_real_layout` writes config.json in the family's own
format and the weights under its own names, and the tests check the mapping against
the published names written out by hand here, not against the mapping code itself.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from t3d.dllm import UserError, load_model
from t3d.dllm.tiny import build_real_layout

# Published LLaDA names -> the Llama module t3d must load them into (layer 0 and the top).
LLADA_NAMES = {
    "model.transformer.wte.weight": lambda n: n.model.embed_tokens.weight,
    "model.transformer.ln_f.weight": lambda n: n.model.norm.weight,
    "model.transformer.ff_out.weight": lambda n: n.lm_head.weight,
    "model.transformer.blocks.0.q_proj.weight": lambda n: n.model.layers[0].self_attn.q_proj.weight,
    "model.transformer.blocks.0.k_proj.weight": lambda n: n.model.layers[0].self_attn.k_proj.weight,
    "model.transformer.blocks.0.v_proj.weight": lambda n: n.model.layers[0].self_attn.v_proj.weight,
    "model.transformer.blocks.0.attn_out.weight": lambda n: n.model.layers[0].self_attn.o_proj.weight,
    "model.transformer.blocks.0.ff_proj.weight": lambda n: n.model.layers[0].mlp.gate_proj.weight,
    "model.transformer.blocks.0.up_proj.weight": lambda n: n.model.layers[0].mlp.up_proj.weight,
    "model.transformer.blocks.0.ff_out.weight": lambda n: n.model.layers[0].mlp.down_proj.weight,
    "model.transformer.blocks.0.attn_norm.weight": lambda n: n.model.layers[0].input_layernorm.weight,
    "model.transformer.blocks.0.ff_norm.weight": lambda n: n.model.layers[0].post_attention_layernorm.weight,
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {f: build_real_layout(root / f, f) for f in ("sdar", "llada", "dream")}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_llada_names_land_in_the_right_llama_modules(layouts):
    stored = load_file(str(layouts["llada"] / "model.safetensors"))
    assert set(LLADA_NAMES) <= set(stored), "the writer must use LLaDA's published names"
    net = load_model(layouts["llada"]).net
    for name, module in LLADA_NAMES.items():
        assert torch.equal(module(net), stored[name].float()), name


@pytest.mark.parametrize("family,cls", [("sdar", "Qwen3ForCausalLM"), ("dream", "Qwen2ForCausalLM")])
def test_qwen_layouts_keep_their_names(layouts, family, cls):
    stored = load_file(str(layouts[family] / "model.safetensors"))
    model = load_model(layouts[family])
    assert type(model.net).__name__ == cls
    params = dict(model.net.named_parameters())
    assert set(stored) == set(params)
    assert all(torch.equal(params[k], stored[k].float()) for k in stored)


def test_model_type_matches_case_insensitively(layouts, tmp_path):
    path = _copy(layouts["sdar"], tmp_path / "upper")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "SDAR"}))
    assert load_model(path).family.name == "sdar"
    assert load_model(layouts["dream"]).family.name == "dream"  # published as "Dream"


def test_sharded_checkpoint_loads_like_the_single_file(layouts, tmp_path):
    sharded = build_real_layout(tmp_path / "sharded", "sdar", shards=2)
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    a, b = load_model(layouts["sdar"]), load_model(sharded)
    ids = torch.randint(0, 90, (2, 9))
    with torch.no_grad():
        assert torch.equal(a.logits(ids, block_size=4), b.logits(ids, block_size=4))


def _edit_weights(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


BAD_WEIGHTS = {
    "nan": (lambda t: t["model.layers.0.mlp.up_proj.weight"].view(-1).__setitem__(3, float("nan")),
            "model.layers.0.mlp.up_proj.weight holds NaN"),
    "missing": (lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"),
                "missing from the checkpoint: model.layers.1.self_attn.k_proj.weight"),
    "extra": (lambda t: t.__setitem__("model.layers.0.extra.weight", torch.zeros(2)),
              "unexpected tensors not in the model: model.layers.0.extra.weight"),
    "shape": (lambda t: t.__setitem__("model.norm.weight", torch.ones(31, dtype=torch.bfloat16)),
              "model.norm.weight has shape (31,)"),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weights_are_refused_by_name(layouts, tmp_path, case):
    edit, message = BAD_WEIGHTS[case]
    path = _copy(layouts["sdar"], tmp_path / case)
    _edit_weights(path, edit)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(path)


def test_unknown_model_type_names_the_known_ones_and_the_way_out(layouts, tmp_path):
    path = _copy(layouts["sdar"], tmp_path / "mystery")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "mystery_dllm"}))
    with pytest.raises(UserError) as err:
        load_model(path)
    message = str(err.value)
    assert "mystery_dllm" in message and "sdar" in message and "--trust-remote-code" in message
    assert load_model(path, family="sdar").family.name == "sdar"  # --family overrides


def test_unsupported_moe_types_say_so(layouts, tmp_path):
    path = _copy(layouts["sdar"], tmp_path / "moe")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "sdar_moe"}))
    with pytest.raises(UserError, match="not supported yet"):
        load_model(path)


def test_generation_config_with_an_unknown_eos_id_is_refused(layouts, tmp_path):
    path = _copy(layouts["dream"], tmp_path / "eos")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [94, 5000]}))
    with pytest.raises(UserError, match="generation_config.json: eos token id 5000"):
        load_model(path)


def test_tokenizer_without_the_mask_token_is_refused(layouts, tmp_path):
    from t3d.dllm.tokenizer import build_tokenizer

    path = _copy(layouts["sdar"], tmp_path / "tok")
    build_tokenizer([f"w{i}" for i in range(20)]).save_pretrained(path)  # ~25 ids: none is the mask id 95
    with pytest.raises(UserError, match="no token with the mask id 95"):
        load_model(path)


def test_llada_settings_llama_cannot_compute_are_refused(layouts, tmp_path):
    path = _copy(layouts["llada"], tmp_path / "alibi")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"alibi": True}))
    with pytest.raises(UserError, match="alibi=True is not supported for LLaDA"):
        load_model(path)


def test_the_cli_prints_one_line_for_a_nan_weight(layouts, tmp_path):
    from t3d.trainer.eval_cli import app  # loads its models in-process (t3d-collect loads them on Ray workers)

    path = _copy(layouts["sdar"], tmp_path / "cli")
    _edit_weights(path, BAD_WEIGHTS["nan"][0])
    result = CliRunner().invoke(app, ["--model", f"bad={path}", "--prompts", "builtin:test", "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds NaN" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "eval.json").exists()


def test_a_students_t3d_json_gives_its_family_and_block_size(layouts, tmp_path):
    """A student keeps its teacher's config.json; what t3d trained it as lives in t3d.json."""
    path = _copy(layouts["llada"], tmp_path / "student")
    assert load_model(path).block_size is None  # LLaDA's config has no block size
    (path / "t3d.json").write_text(json.dumps({"family": "block_causal", "block_size": 8}))
    model = load_model(path)
    assert model.family.name == "block_causal" and model.block_size == 8
    assert load_model(path, family="llada").family.name == "llada"  # --family still wins


def test_save_like_keeps_a_multi_file_layout_without_an_index(tmp_path):
    """Shards with no index file: each tensor goes back to the file that held it."""
    from t3d.dllm.weights import save_like

    src = tmp_path / "src"
    src.mkdir()
    save_file({"a": torch.zeros(2)}, str(src / "part-1.safetensors"))
    save_file({"b": torch.ones(3)}, str(src / "part-2.safetensors"))
    save_like({"a": torch.full((2,), 5.0), "b": torch.full((3,), 7.0)}, tmp_path / "out", src)
    assert set(load_file(str(tmp_path / "out" / "part-1.safetensors"))) == {"a"}
    assert set(load_file(str(tmp_path / "out" / "part-2.safetensors"))) == {"b"}
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
