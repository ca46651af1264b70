"""The loader and the three model families, on tiny checkpoints built from configs."""

import json

import pytest
import torch

from t3d.dllm import UserError, load_model
from t3d.dllm.tiny import build_checkpoint


def _ids(seed=0, batch=2, length=14):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 60, (batch, length), generator=g)


def test_block_causal_mask_is_honoured(tiny_models):
    model = tiny_models["block_causal"]  # prompt 2 tokens, blocks of 4: blocks 0=[0,2), 1=[2,6), 2=[6,10), 3=[10,14)
    ids = _ids()
    changed = ids.clone()
    changed[:, 7] += 1  # a token of block 2
    a = model.logits(ids, prompt_len=2, block_size=4)
    b = model.logits(changed, prompt_len=2, block_size=4)
    assert torch.equal(a[:, :6], b[:, :6]), "a later block leaked into earlier blocks"
    assert not torch.allclose(a[:, 6:10], b[:, 6:10]), "the block itself must see the change"
    assert not torch.allclose(a[:, 10:], b[:, 10:]), "later blocks must see the change"


def test_bidirectional_attention_reaches_both_ways(tiny_models):
    model = tiny_models["bidirectional"]
    ids = _ids()
    changed = ids.clone()
    changed[:, 7] += 1
    a, b = model.logits(ids), model.logits(changed)
    assert not torch.allclose(a[:, :7], b[:, :7]), "earlier positions must see a later token"
    assert not torch.allclose(a[:, 8:], b[:, 8:]), "later positions must see an earlier token"


def test_left_padding_changes_nothing(tiny_models):
    for model in tiny_models.values():
        ids = _ids(batch=1)
        padded = torch.cat([torch.full((1, 3), model.pad_id), ids], dim=1)
        attention = torch.ones_like(padded, dtype=torch.bool)
        attention[:, :3] = False
        plain = model.logits(ids, prompt_len=2, block_size=4)
        with_pad = model.logits(padded, attention, prompt_len=5, block_size=4)
        # Column 0 has no predictor in the shifted family; every other row must match.
        assert torch.allclose(plain[:, 1:], with_pad[:, 4:], atol=1e-5)
        assert not torch.isnan(with_pad).any()


def _identity_checkpoint(path, family):
    """A network whose row i reads token i: layers write nothing, the head is the embedding."""
    build_checkpoint(path, family, hidden_size=64, vocab_size=32, intermediate_size=64)
    model = load_model(path)
    with torch.no_grad():
        for layer in model.net.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.net.lm_head.weight.copy_(model.net.model.embed_tokens.weight)
    model.net.save_pretrained(path)
    return load_model(path)


def test_dream_style_unshift_lines_logits_up(tmp_path):
    ids = torch.tensor([[3, 9, 4, 17, 25, 6, 11, 8]])
    plain = _identity_checkpoint(tmp_path / "plain", "bidirectional")
    shifted = _identity_checkpoint(tmp_path / "shifted", "shifted")
    assert torch.equal(plain.logits(ids).argmax(-1), ids), "identity network reads its own token"
    # The shifted family treats raw row i - 1 as the predictor of token i.
    assert torch.equal(shifted.logits(ids).argmax(-1)[:, 1:], ids[:, :-1])


def test_special_ids_and_identity(tiny_models):
    model = tiny_models["bidirectional"]
    assert (model.mask_id, model.pad_id, model.eos_id, model.vocab_size) == (63, 1, 2, 64)
    ident = model.identity()
    assert ident["family"] == "bidirectional" and len(ident["fingerprint"]) == 16


def test_fingerprint_follows_the_weights(tmp_path):
    a = load_model(build_checkpoint(tmp_path / "a", seed=0))
    b = load_model(build_checkpoint(tmp_path / "b", seed=1))
    c = load_model(build_checkpoint(tmp_path / "c", seed=0))
    assert a.fingerprint != b.fingerprint and a.fingerprint == c.fingerprint


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "model directory not found"),
        (lambda p: p.mkdir(), "no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "no safetensors weights"),
    ],
)
def test_bad_checkpoint_directories(tmp_path, setup, message):
    path = tmp_path / "ckpt"
    setup(path)
    with pytest.raises(UserError, match=message) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_checkpoint_without_mask_token(tmp_path):
    path = build_checkpoint(tmp_path / "nomask", mask_id=-1)
    with pytest.raises(UserError, match="has no mask token") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_unknown_family(tmp_path):
    path = build_checkpoint(tmp_path / "fam")
    config = json.loads((path / "config.json").read_text())
    config["t3d_family"] = "autoregressive"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="unknown model family 'autoregressive'"):
        load_model(path)
    del config["t3d_family"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="cannot tell the model family"):
        load_model(path)
    assert load_model(path, family="shifted").family.name == "shifted"
