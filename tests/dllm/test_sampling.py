"""The trajectory-recording sampler: schedules, reconstruction, seeds, batching, EOS."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from t3d.dllm import UserError
from t3d.dllm.families import get_family
from t3d.dllm.model import DiffusionLM
from t3d.dllm.reveal import static_schedule
from t3d.dllm.sampling import SamplerConfig, sample

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [20]]
SEEDS = [11, 12, 13, 14]


def reconstruct(tokens, reveal_step, step, mask_id):
    """The state the model saw at `step`, from the final tokens and reveal steps alone."""
    return np.where(reveal_step >= step, mask_id, tokens)


@pytest.mark.parametrize("family", ["bidirectional", "shifted", "block_causal"])
@pytest.mark.parametrize("strategy", ["static", "threshold"])
def test_states_reconstruct_from_reveal_steps(tiny_models, family, strategy):
    model = tiny_models[family]
    cfg = SamplerConfig(steps_per_block=2, strategy=strategy, threshold=0.02, record_states=True, stop_at_eos=False)
    out = sample(model, PROMPTS, cfg, SEEDS)
    assert out.states.shape[:2] == (len(PROMPTS), out.num_steps.max())
    for i in range(len(PROMPTS)):
        for s in range(out.states.shape[1]):
            np.testing.assert_array_equal(reconstruct(out.tokens[i], out.reveal_step[i], s, model.mask_id), out.states[i, s])
        assert (out.states[i, 0] == model.mask_id).all(), "decoding starts fully masked"


def test_every_position_revealed_exactly_once(tiny_models):
    model = tiny_models["bidirectional"]
    cfg = SamplerConfig(steps_per_block=4, record_states=True, stop_at_eos=False)
    out = sample(model, PROMPTS, cfg, SEEDS)
    assert (out.reveal_step >= 0).all()
    states = np.concatenate([out.states, out.tokens[:, None, :]], axis=1)  # (N, S + 1, L)
    masked = states == model.mask_id
    # Each position goes from masked to revealed exactly once and never back.
    flips = (masked[:, :-1] & ~masked[:, 1:]).sum(axis=1)
    unflips = (~masked[:, :-1] & masked[:, 1:]).sum(axis=1)
    assert (flips == 1).all() and (unflips == 0).all()
    assert not (out.tokens == model.mask_id).any()


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_static_schedule_reveals_per_step(tiny_models, steps):
    model = tiny_models["bidirectional"]
    cfg = SamplerConfig(steps_per_block=steps, stop_at_eos=False)
    out = sample(model, PROMPTS, cfg, SEEDS)
    expected = static_schedule(4, steps) * cfg.num_blocks
    assert sum(static_schedule(4, steps)) == 4
    assert (out.num_steps == cfg.full_steps).all() and out.nfe == cfg.full_steps
    for i in range(len(PROMPTS)):
        counts = np.bincount(out.reveal_step[i], minlength=cfg.full_steps)
        assert counts.tolist() == expected
        # Reveals stay inside the current block: block b is done before block b + 1 starts.
        blocks = np.arange(16) // 4
        assert all(out.reveal_step[i][blocks == b].max() < out.reveal_step[i][blocks == b + 1].min() for b in range(3))


def test_threshold_reveals_at_least_one_per_step(tiny_models):
    model = tiny_models["block_causal"]
    for threshold in (1.0, 0.05, 0.001):
        out = sample(model, PROMPTS, SamplerConfig(strategy="threshold", threshold=threshold, stop_at_eos=False), SEEDS)
        for i in range(len(PROMPTS)):
            counts = np.bincount(out.reveal_step[i], minlength=out.num_steps[i])
            assert len(counts) == out.num_steps[i] and (counts >= 1).all()
        if threshold == 1.0:  # nothing is that confident: one token per step
            assert (out.num_steps == 16).all()
        if threshold == 0.001:  # everything is: one step per block
            assert (out.num_steps == 4).all()


def test_same_seed_same_output_and_seeds_matter(tiny_models):
    model = tiny_models["shifted"]
    cfg = SamplerConfig(steps_per_block=2)
    a, b = sample(model, PROMPTS, cfg, SEEDS), sample(model, PROMPTS, cfg, SEEDS)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.reveal_step, b.reveal_step)
    np.testing.assert_array_equal(a.topk_logprobs, b.topk_logprobs)
    c = sample(model, PROMPTS, cfg, [s + 100 for s in SEEDS])
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("family", ["bidirectional", "block_causal"])
def test_mixed_length_batch_equals_one_by_one(tiny_models, family):
    model = tiny_models[family]
    cfg = SamplerConfig(strategy="threshold", threshold=0.03, record_states=True)
    batch = sample(model, PROMPTS, cfg, SEEDS)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        one = sample(model, [prompt], cfg, [seed])
        np.testing.assert_array_equal(one.tokens[0], batch.tokens[i])
        np.testing.assert_array_equal(one.reveal_step[0], batch.reveal_step[i])
        np.testing.assert_allclose(one.confidence[0], batch.confidence[i], rtol=1e-4, atol=1e-6)
        assert one.num_steps[0] == batch.num_steps[i]


def test_greedy_is_deterministic_and_topk_records_argmax(tiny_models):
    model = tiny_models["bidirectional"]
    cfg = SamplerConfig(temperature=0.0, steps_per_block=1, logits_top_k=3)
    a, b = sample(model, PROMPTS, cfg, SEEDS), sample(model, PROMPTS, cfg, [0, 0, 0, 0])
    np.testing.assert_array_equal(a.tokens, b.tokens)
    live = a.reveal_step >= 0
    assert (a.topk_ids[..., 0][live] == a.tokens[live]).all(), "greedy reveals the top-1 token"
    assert (np.diff(a.topk_logprobs[live], axis=-1) <= 0).all()
    np.testing.assert_allclose(np.exp(a.topk_logprobs[..., 0][live]), a.confidence[live], rtol=1e-5)


def test_top_k_one_equals_greedy(tiny_models):
    model = tiny_models["bidirectional"]
    greedy = sample(model, PROMPTS, SamplerConfig(temperature=0.0), SEEDS)
    top1 = sample(model, PROMPTS, SamplerConfig(temperature=1.0, top_k=1), SEEDS)
    tiny_p = sample(model, PROMPTS, SamplerConfig(temperature=1.0, top_p=1e-6), SEEDS)
    np.testing.assert_array_equal(greedy.tokens, top1.tokens)
    np.testing.assert_array_equal(greedy.tokens, tiny_p.tokens)


class ScriptedNet(torch.nn.Module):
    """A stand-in network: fixed random logits, with EOS made certain from column `eos_col` on."""

    def __init__(self, vocab=16, eos=2, eos_col=9):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.table = torch.randn(64, vocab, generator=torch.Generator().manual_seed(0))
        self.eos, self.eos_col = eos, eos_col

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = self.table[position_ids].clone()  # (B, T, V)
        logits[..., self.eos] = torch.where(position_ids >= self.eos_col, 50.0, -50.0)
        return SimpleNamespace(logits=logits)


def scripted_model(eos_col):
    net = ScriptedNet(eos_col=eos_col)
    return DiffusionLM(net=net, family=get_family("bidirectional"), mask_id=15, pad_id=1, eos_id=2,
                       vocab_size=16, max_length=64, name="scripted", fingerprint="0", path="-")


def test_eos_stops_the_row_and_pads_the_rest():
    # Prompt of 3 tokens: EOS is certain from response position 6 on (position id 9).
    model = scripted_model(eos_col=9)
    cfg = SamplerConfig(steps_per_block=4, record_states=True)
    out = sample(model, [[3, 4, 5]], cfg, [0])
    assert out.finish_reason == ["eos"]
    assert out.tokens[0, 6] == 2 and (out.tokens[0, 7:] == 1).all()
    assert (out.reveal_step[0, 7:] == -1).all() and (out.reveal_step[0, :7] >= 0).all()
    assert out.response_length[0] == 7
    assert out.num_steps[0] < cfg.full_steps, "later blocks are never decoded"
    for s in range(out.states.shape[1]):
        np.testing.assert_array_equal(reconstruct(out.tokens[0], out.reveal_step[0], s, 15), out.states[0, s])
    assert (out.states[0, :, 7:] == 1).all(), "padding is recorded as pad in every state"
    assert not (out.tokens[0] == 15).any()


def test_no_eos_means_length():
    out = sample(scripted_model(eos_col=99), [[3, 4, 5]], SamplerConfig(), [0])
    assert out.finish_reason == ["length"] and (out.reveal_step >= 0).all()


def test_prompt_too_long_names_the_prompt(tiny_models):
    model = tiny_models["bidirectional"]  # max_position_embeddings 64
    with pytest.raises(UserError, match="prompt 1 has 60 tokens"):
        sample(model, [[5], [5] * 60], SamplerConfig(), [0, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=10, block_size=4), "multiple of block_size"),
        (dict(steps_per_block=5), "steps_per_block"),
        (dict(strategy="random"), "unknown strategy"),
        (dict(top_p=0.0), "top_p"),
        (dict(threshold=1.5), "threshold"),
    ],
)
def test_config_ranges(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplerConfig(**kwargs)
