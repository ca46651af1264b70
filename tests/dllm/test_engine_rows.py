"""The engine's network work: LM-head rows only where logits are read, K/V never copied for GQA on CPU."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.integrations import sdpa_attention

from t3d.dllm.attention import NAME
from t3d.dllm.families import get_family
from t3d.dllm.model import DiffusionLM
from t3d.dllm.sampling import SamplerConfig, sample

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [20, 21, 22, 23]]
SEEDS = [1, 2, 3, 4]
CFG = SamplerConfig(max_new_tokens=12, block_size=4, steps_per_block=4, stop_at_eos=False, logits_top_k=3)


def gqa_model(attn: str = "sdpa") -> DiffusionLM:
    """A tiny Qwen3 with 4 query heads over 2 KV heads (SDAR's layout), wrapped as the loader wraps one."""
    config = Qwen3Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, intermediate_size=128, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    config._attn_implementation = attn
    torch.manual_seed(0)
    net = Qwen3ForCausalLM(config).eval()
    return DiffusionLM(net=net, family=get_family("sdar"), mask_id=63, pad_id=1, eos_id=2, vocab_size=64,
                       max_length=64, name="gqa", fingerprint="0", path="-", block_size=4)  # fmt: skip


@pytest.fixture
def kv_copies(monkeypatch):
    """Bytes of keys and values copied by transformers' `repeat_kv` (what SDPA's GQA path avoids)."""
    copied = []
    original = sdpa_attention.repeat_kv

    def counting(hidden, n_rep):
        out = original(hidden, n_rep)
        copied.append(out.numel() * out.element_size() if n_rep > 1 else 0)
        return out

    monkeypatch.setattr(sdpa_attention, "repeat_kv", counting)
    return copied


def head_rows(model: DiffusionLM, fn) -> tuple[list[int], int]:
    """(LM-head rows of each head call, network forwards) while `fn` runs."""
    rows, forwards = [], []
    hooks = [model.net.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel())),
             model.net.model.register_forward_hook(lambda *a: forwards.append(1))]  # fmt: skip
    try:
        fn()
    finally:
        for hook in hooks:
            hook.remove()
    return rows, len(forwards)


def test_gqa_attention_copies_no_keys_and_decodes_the_same_tokens(kv_copies):
    grouped = gqa_model()
    assert grouped.net.config._attn_implementation == NAME
    fast = sample(grouped, PROMPTS, CFG, SEEDS)
    assert sum(kv_copies) == 0, "K/V were copied to the query heads"
    plain = gqa_model()
    plain.net.config._attn_implementation = "sdpa"  # transformers' own path: repeat_kv under a 4D mask
    slow = sample(plain, PROMPTS, CFG, SEEDS)
    assert sum(kv_copies) > 0
    for name in ("tokens", "reveal_step", "topk_ids", "topk_logprobs", "confidence"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


def test_gqa_attention_trains_to_the_same_gradients(kv_copies):
    """The trainer's forward and backward through the grouped path: the same bits as repeat_kv's."""
    ids = torch.randint(0, 63, (2, 10), generator=torch.Generator().manual_seed(0))
    grads = []
    for attn in (NAME, "sdpa"):
        model = gqa_model()
        model.net.config._attn_implementation = attn
        bias = model.family.attention_bias(torch.ones_like(ids, dtype=torch.bool), 4, 4, torch.float32)
        model.logits_with_bias(ids, bias, torch.arange(10)[None].expand(2, -1)).logsumexp(-1).sum().backward()
        grads.append([p.grad for p in model.net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert sum(kv_copies) > 0  # only the "sdpa" pass copied


def test_head_runs_only_on_read_rows_and_cached_equals_uncached():
    """Exact cache: prefill and commits compute no head row; every step computes one per masked position read."""
    model, prompts = gqa_model(), [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]  # block-aligned: rows step together
    out = {}
    cached_rows, forwards = head_rows(model, lambda: out.setdefault("cached", sample(model, prompts, CFG, SEEDS[:3])))
    uncached = dataclasses.replace(CFG, cache="none")
    uncached_rows, _ = head_rows(model, lambda: out.setdefault("none", sample(model, prompts, uncached, SEEDS[:3])))
    steps = out["cached"].nfe
    blocks = CFG.max_new_tokens // CFG.block_size
    assert forwards == 1 + steps + (blocks - 1), "one prefill, one forward per step, a commit per finished block"
    read = [len(prompts) * m for m in (4, 3, 2, 1)] * blocks  # one token per step: 4, 3, 2, 1 masks left
    assert cached_rows == read, "a prefill or commit computed LM-head rows nobody reads"
    assert uncached_rows == read
    for name in ("tokens", "reveal_step", "topk_ids"):
        np.testing.assert_array_equal(getattr(out["cached"], name), getattr(out["none"], name), err_msg=name)
