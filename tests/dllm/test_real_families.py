"""SDAR, LLaDA and Dream checkpoints laid out like a user's download, loaded natively.

Against the families' own modelling code (the `-compat` fixtures of ../shared/realckpt,
run with trust_remote_code as reference implementations only): the logits t3d computes
through transformers' Qwen3 / Llama / Qwen2 classes must equal theirs in fp32, row by
row, even when t3d pads a batch of mixed prompt lengths on the left.
"""

from __future__ import annotations

import json

import pytest
import torch

from t3d.dllm import load_model

PROMPT_LENGTHS = (7, 4, 9, 12)  # mixed, multiples of the block and not
BLOCK = 4


def _keep_mask(length: int) -> torch.Tensor:
    """SDAR's own convention: True where a query may attend; blocks at absolute positions."""
    blocks = torch.arange(length) // BLOCK
    return (blocks[None, :] <= blocks[:, None])[None, None]  # (1, 1, T, T)


def upstream_logits(name: str, net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The family's own forward on one unpadded row (1, T) -> (T, V), rows aligned to positions."""
    with torch.no_grad():
        if name == "sdar":
            out = net(input_ids=ids, attention_mask=_keep_mask(ids.shape[1]), position_ids=torch.arange(ids.shape[1])[None])
        else:
            out = net(input_ids=ids)
    logits = out.logits[0]
    if name == "dream":  # row i predicts token i + 1: realign as t3d does
        logits = torch.cat([logits[:1], logits[:-1]])
    return logits


def _batch(lengths, vocab=300, pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad)
    attention = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        attention[i, width - len(row) :] = True
    return rows, ids, attention


@pytest.mark.parametrize("name", ["sdar", "llada", "llada_v2", "dream"])
def test_logits_equal_the_familys_own_code_on_a_left_padded_batch(real_fixtures, upstream_net, name):
    model = load_model(real_fixtures / name)  # pristine directory: its .py files are never run
    reference = upstream_net(name)
    rows, ids, attention = _batch(PROMPT_LENGTHS, pad=model.pad_id)
    with torch.no_grad():
        ours = model.logits(ids, attention, prompt_len=ids.shape[1], block_size=BLOCK)  # (B, T, V)
    worst = 0.0
    for i, row in enumerate(rows):
        theirs = upstream_logits(name, reference, row[None])  # (n, V)
        mine = ours[i, ids.shape[1] - len(row) :]
        first = 1 if model.family.shifted else 0  # a shifted family has no predictor for the first token
        worst = max(worst, float((mine[first:] - theirs[first:]).abs().max()))
    assert worst <= 1e-5, f"{name}: max |diff| {worst}"


@pytest.mark.parametrize("name", ["sdar", "dream", "llada"])
def test_rope_buffers_hold_their_analytic_values(real_fixtures, name):
    model = load_model(real_fixtures / name)
    config = model.net.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    expected = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    inv_freq = model.net.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cpu" and torch.allclose(inv_freq.float(), expected, rtol=1e-6)


def test_sdar_is_block_causal_at_absolute_positions(real_fixtures):
    model = load_model(real_fixtures / "sdar")
    assert model.family.block_causal and model.family.absolute_blocks
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (1, 14), generator=g)  # blocks [0,4) [4,8) [8,12) [12,14)
    changed = ids.clone()
    changed[0, 9] += 1  # in absolute block 2
    with torch.no_grad():
        a = model.logits(ids, prompt_len=6, block_size=BLOCK)  # prompt_len 6 is not a block boundary
        b = model.logits(changed, prompt_len=6, block_size=BLOCK)
    assert torch.equal(a[:, :8], b[:, :8]), "a later block changed an earlier block's logits"
    assert not torch.allclose(a[:, 8:12], b[:, 8:12]), "the block itself must see the change"


def test_pristine_fixtures_load_without_remote_code(real_fixtures):
    for name, cls in [("sdar", "Qwen3ForCausalLM"), ("llada", "LlamaForCausalLM"), ("dream", "Qwen2ForCausalLM")]:
        model = load_model(real_fixtures / name)
        assert type(model.net).__name__ == cls and model.native
        assert model.dtype == torch.float32  # bf16 checkpoints run in fp32 on CPU


def test_turn_end_tokens_stop_a_response(real_fixtures):
    sdar = load_model(real_fixtures / "sdar")
    specials = json.loads((real_fixtures / "sdar" / "FIXTURE.json").read_text())["special_ids"]
    assert sdar.eos_id == specials["<|endoftext|>"]
    assert set(sdar.eos_ids) == {specials["<|endoftext|>"], specials["<|im_end|>"]}
    assert sdar.identity()["stop_ids"] == list(sdar.eos_ids)


def test_dtype_is_kept_when_asked(real_fixtures):
    model = load_model(real_fixtures / "sdar", dtype="auto", device="cpu")
    assert model.dtype == torch.float32
    assert load_model(real_fixtures / "sdar", dtype="bfloat16").dtype == torch.bfloat16


def test_unknown_model_type_runs_its_own_code_only_when_trusted(real_fixtures, tmp_path):
    """--trust-remote-code --family: the checkpoint's own code, with its RoPE buffers rebuilt from the config."""
    import shutil

    from t3d.dllm import UserError

    path = shutil.copytree(real_fixtures / "dream-compat", tmp_path / "renamed")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "dream_variant"}))
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_model(path, family="shifted")
    remote = load_model(path, family="shifted", trust_remote_code=True)
    assert not remote.native and type(remote.net).__name__ == "DreamModel"
    native = load_model(real_fixtures / "dream")
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(remote.logits(ids), native.logits(ids), atol=1e-5)
