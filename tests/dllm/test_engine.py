"""The rollout engine: exact KV cache, absolute blocks, stop ids, LM head on decoded positions, slots."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from t3d.dllm import load_model
from t3d.dllm.families import get_family
from t3d.dllm.sampling import SamplerConfig, sample
from t3d.dllm.tiny import build_checkpoint

# Lengths 1..8 around the block size 4: multiples and not; the batch is left-padded to 8.
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [20], [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16], [30] * 6, [31] * 7]
SEEDS = list(range(100, 108))
FIELDS = ("tokens", "reveal_step", "topk_ids", "num_steps", "finish_reason")
SDAR_GENERATE = Path(__file__).resolve().parents[3] / "shared/realckpt/upstream/sdar/generate.py"


@pytest.fixture(scope="module")
def block_models(tmp_path_factory):
    """The tiny block-causal model, relative and absolute (SDAR) alignment; stop ids 2, 3, 4 so rows do stop."""
    model = load_model(build_checkpoint(tmp_path_factory.mktemp("bc"), "block_causal"))
    model = dataclasses.replace(model, stop_ids=(3, 4))
    absolute = dataclasses.replace(model, family=dataclasses.replace(get_family("block_causal"), absolute_blocks=True))
    return {"relative": model, "absolute": absolute}


def assert_same(a, b, rows=None):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if rows is not None:
            x = [x[i] for i in rows] if isinstance(x, list) else x[rows]
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    rows = list(range(len(a.tokens))) if rows is None else rows
    if a.states is not None or b.states is not None:  # each row's own steps (a batch pads to its longest row)
        for i, j in enumerate(rows):
            n = b.num_steps[i]
            np.testing.assert_array_equal(a.states[j, :n], b.states[i, :n], err_msg=f"states of row {j}")
    x_conf = a.confidence[rows]
    np.testing.assert_allclose(x_conf, b.confidence, atol=1e-6)
    x_top = a.topk_logprobs[rows]
    np.testing.assert_allclose(x_top, b.topk_logprobs, atol=1e-5)


@pytest.mark.parametrize("layout", ["relative", "absolute"])
@pytest.mark.parametrize("strategy", ["static", "threshold"])
@pytest.mark.parametrize("stop", [True, False])
def test_cached_equals_uncached(block_models, layout, strategy, stop):
    model = block_models[layout]
    cfg = SamplerConfig(strategy=strategy, threshold=0.0205, top_k=3, steps_per_block=2, record_states=True, stop_at_eos=stop)
    cached = sample(model, PROMPTS, cfg, SEEDS)
    uncached = sample(model, PROMPTS, dataclasses.replace(cfg, cache="none"), SEEDS)
    assert_same(cached, uncached)
    if stop:
        assert "eos" in cached.finish_reason and "length" in cached.finish_reason
    if strategy == "threshold":  # rows moved through their blocks at different speeds
        assert len(set(cached.num_steps.tolist())) > 1


def test_cached_step_runs_only_the_block(block_models):
    """Each step's forward carries B tokens (plus prefill and one commit per block), not the whole sequence."""
    model = block_models["relative"]
    widths = []  # the trunk runs in every forward (a prefill or commit runs nothing else)
    hook = model.net.model.register_forward_pre_hook(lambda mod, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = sample(model, [[5, 6, 7, 8, 9]], SamplerConfig(steps_per_block=4, stop_at_eos=False), [0])
    finally:
        hook.remove()
    assert out.nfe == 16
    assert widths[0] == 5, "the prompt is prefilled once"
    assert widths[1:] == [4] * (16 + 3), "16 block steps of 4 tokens and 3 commits (the last block needs none)"


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_lm_head_runs_only_on_the_masked_positions(block_models, tiny_models, cache):
    """One token per step in blocks of 4: each step's LM head sees the 4, 3, 2, then 1 positions still masked
    per row; the cache's prefill and commits, whose logits nobody reads, never run it."""
    for model in (block_models["relative"], tiny_models["bidirectional"]):
        rows = []
        hook = model.net.get_output_embeddings().register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[1]))
        try:
            out = sample(model, PROMPTS[:3], SamplerConfig(cache=cache, stop_at_eos=False), SEEDS[:3])
        finally:
            hook.remove()
        assert out.nfe == 16
        expected = [4, 3, 2, 1] * 4  # each block's steps; no row for a prefill or commit
        assert rows == expected, f"{model.family.name}, cache {cache}: the LM head saw {rows}"


@pytest.mark.parametrize("layout", ["relative", "absolute"])
@pytest.mark.parametrize("max_batch", [1, 3])
def test_a_row_decodes_the_same_alone_in_a_batch_and_in_any_slot(block_models, layout, max_batch):
    model = block_models[layout]
    cfg = SamplerConfig(strategy="threshold", threshold=0.0205, top_k=3, record_states=True)
    batch = sample(model, PROMPTS, cfg, SEEDS)
    slots = sample(model, PROMPTS, cfg, SEEDS, max_batch=max_batch)  # continuous batching over fewer slots
    assert_same(slots, batch)
    order = [5, 2, 7, 0]  # other neighbours, other slots
    shuffled = sample(model, [PROMPTS[i] for i in order], cfg, [SEEDS[i] for i in order], max_batch=2)
    assert_same(batch, shuffled, rows=order)
    alone = sample(model, [PROMPTS[3]], cfg, [SEEDS[3]])
    assert_same(batch, alone, rows=[3])


def test_continuous_batching_refills_slots(block_models):
    """With 2 slots, a row that stops early frees its slot for the next row: fewer forwards than fixed batches."""
    model = block_models["relative"]
    cfg = SamplerConfig(steps_per_block=4)
    out = sample(model, PROMPTS, cfg, SEEDS, max_batch=2)
    fixed = sum(max(out.num_steps[i : i + 2]) for i in range(0, len(PROMPTS), 2))  # batches of 2 wait for their longest
    assert out.nfe < fixed
    assert out.nfe >= int(np.ceil(out.num_steps.sum() / 2))


def test_absolute_blocks_leave_the_prompt_tail_alone(block_models):
    model = block_models["absolute"]
    out = sample(model, PROMPTS, SamplerConfig(stop_at_eos=False, record_states=True), SEEDS)
    for i, prompt in enumerate(PROMPTS):
        shift = len(prompt) % 4
        live = 16 - shift
        assert (out.reveal_step[i, :live] >= 0).all() and (out.reveal_step[i, live:] == -1).all()
        assert (out.tokens[i, live:] == model.pad_id).all()
        assert (out.states[i, :, live:] == model.pad_id).all()
        # The first block holds 4 - shift response positions, so it is done in that many static steps.
        assert sorted(out.reveal_step[i, : 4 - shift]) == list(range(4 - shift))


class SdarNet(torch.nn.Module):
    """A native Llama called the way SDAR's decoder calls its own network (0/1 keep mask, `store_kv`)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    @property
    def device(self):
        return next(self.net.parameters()).device

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, store_kv):
        keep = attention_mask.bool()  # (1, q, K)
        bias = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
        out = self.net(input_ids=input_ids, attention_mask=bias[:, None], position_ids=position_ids, cache=past_key_values, use_cache=True)
        if not store_kv:
            past_key_values.crop(-input_ids.shape[1])
        return out


def load_sdar_generate(mask_id):
    spec = importlib.util.spec_from_file_location("sdar_generate", SDAR_GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def greedy(logits, temperature=1.0, top_k=0, top_p=1.0):  # argmax with the untempered probability, mask excluded
        logits = logits.float().clone()
        logits[..., mask_id] = float("-inf")
        probs = logits.softmax(dim=-1)
        token = probs.argmax(dim=-1)
        return token, probs.gather(-1, token[..., None]).squeeze(-1)

    module.sample_with_temperature_topk_topp = greedy
    return module


@pytest.mark.skipif(not SDAR_GENERATE.exists(), reason="SDAR's reference decoder is not in ../shared")
@pytest.mark.parametrize("strategy, sdar_strategy", [("static", "low_confidence_static"), ("threshold", "low_confidence_dynamic")])
def test_absolute_blocks_equal_sdar_block_diffusion_generate(block_models, strategy, sdar_strategy):
    """Batched t3d (left padding, mixed lengths) == SDAR's own decoder per prompt with gen_length = L - (P mod B)."""
    model = block_models["absolute"]
    cfg = SamplerConfig(strategy=strategy, threshold=0.0205, top_k=3, temperature=0.0, steps_per_block=4, stop_at_eos=False)
    ours = sample(model, PROMPTS, cfg, SEEDS)
    generate = load_sdar_generate(model.mask_id)
    for i, prompt in enumerate(PROMPTS):
        live = 16 - len(prompt) % 4
        ids = torch.tensor([prompt])
        x = generate.block_diffusion_generate(
            SdarNet(model.net), {"input_ids": ids}, model.mask_id, gen_length=live, block_length=4,
            denoising_steps=4, remasking_strategy=sdar_strategy, confidence_threshold=0.0205,
        )
        np.testing.assert_array_equal(x[0, len(prompt) :].numpy(), ours.tokens[i, :live], err_msg=f"prompt {i}")


def test_every_stop_id_stops_a_row(block_models):
    model = block_models["relative"]
    base = sample(model, PROMPTS, SamplerConfig(stop_at_eos=False), SEEDS)
    only_eos = dataclasses.replace(model, stop_ids=())
    out = sample(model, PROMPTS, SamplerConfig(), SEEDS)
    for i in range(len(PROMPTS)):
        tokens = base.tokens[i].tolist()
        hits = [j for j, t in enumerate(tokens) if t in model.eos_ids]
        if hits:
            j = hits[0]
            assert out.finish_reason[i] == "eos" and out.tokens[i, j] == tokens[j] and (out.tokens[i, j + 1 :] == model.pad_id).all()
    assert any(t in (3, 4) for t in out.tokens[:, :].ravel()), "an extra stop id ended some row"
    assert sample(only_eos, PROMPTS, SamplerConfig(), SEEDS).finish_reason != out.finish_reason


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_approximate_caches_are_exact_on_a_block_causal_model(block_models, cache):
    for model in block_models.values():
        cfg = SamplerConfig(strategy="threshold", threshold=0.0205, top_k=3, steps_per_block=2, record_states=True)
        assert_same(sample(model, PROMPTS, dataclasses.replace(cfg, cache=cache), SEEDS), sample(model, PROMPTS, cfg, SEEDS))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_approximate_caches_on_a_bidirectional_model_are_valid_decodes(tiny_models, cache):
    """Not exact (later blocks change the prefix's keys), so only the trajectory's invariants are checked."""
    model = tiny_models["bidirectional"]
    cfg = SamplerConfig(steps_per_block=2, record_states=True, stop_at_eos=False)
    approx = sample(model, PROMPTS, dataclasses.replace(cfg, cache=cache), SEEDS)
    exact = sample(model, PROMPTS, cfg, SEEDS)
    assert (approx.reveal_step >= 0).all() and not (approx.tokens == model.mask_id).any()
    for s in range(approx.states.shape[1]):
        np.testing.assert_array_equal(np.where(approx.reveal_step >= s, model.mask_id, approx.tokens), approx.states[:, s])
    agreement = (approx.tokens == exact.tokens).mean()
    assert agreement > 0.5, f"{cache} cache agrees with the exact decode on only {agreement:.0%} of tokens"


def test_a_shifted_family_refuses_the_approximate_caches(tiny_models):
    from t3d.dllm.errors import UserError

    with pytest.raises(UserError, match="shifts its logits"):
        sample(tiny_models["shifted"], PROMPTS[:2], SamplerConfig(cache="dual"), SEEDS[:2])


def test_bfloat16_runs_on_cpu(tmp_path):
    model = load_model(build_checkpoint(tmp_path / "bc", "block_causal"), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    out = sample(model, PROMPTS[:3], SamplerConfig(strategy="threshold", threshold=0.1), SEEDS[:3])
    assert np.isfinite(out.confidence).all() and not (out.tokens == model.mask_id).any()


@pytest.mark.parametrize("strategy, steps", [("static", 4), ("static", 2), ("static", 3), ("threshold", 4)])
def test_recorded_topk_is_the_models_topk_at_the_reveal_state(block_models, monkeypatch, strategy, steps):
    """Top-k is computed only for the positions a step reveals (and in chunks of 4 ids here): it must
    still equal the model's own top-k log-probs (mask excluded) of the state each token was revealed in."""
    from t3d.dllm import vocab

    monkeypatch.setattr(vocab, "CHUNK", 4)
    model = block_models["relative"]
    cfg = SamplerConfig(strategy=strategy, threshold=0.0205, steps_per_block=steps, logits_top_k=3, record_states=True, stop_at_eos=False)
    out = sample(model, PROMPTS[:4], cfg, SEEDS[:4])
    for i, prompt in enumerate(PROMPTS[:4]):
        p = len(prompt)
        for s in range(out.num_steps[i]):
            ids = torch.tensor([prompt + out.states[i, s].tolist()])
            with torch.no_grad():
                logits = model.logits(ids, prompt_len=p)[0, p:].float()  # (L, V)
            logits[:, model.mask_id] = float("-inf")
            top = logits.log_softmax(dim=-1).topk(3, dim=-1)
            cols = np.flatnonzero(out.reveal_step[i] == s)
            assert len(cols), f"row {i} revealed nothing at step {s}"
            np.testing.assert_allclose(out.topk_logprobs[i, cols], top.values[cols].numpy(), atol=1e-5)
            np.testing.assert_array_equal(out.topk_ids[i, cols], top.indices[cols].numpy())
