"""Padding after EOS stays out of the loss by default (M, the path window, every mean)."""

import pytest
import torch

from full_logits import t3d_objective
from t3d.trainer.states import StateConfig, build_states

MASK, EOS, PAD, V = 31, 2, 0, 32


def padded_row(length: int, answer: int = 5, seed: int = 0):
    """One trajectory: `answer` tokens then EOS, decoded one token per step in a random order per
    block of 4, then padding (reveal -1) up to `length`."""
    g = torch.Generator().manual_seed(seed)
    real = answer + 1
    x0 = torch.full((1, length), PAD)
    x0[0, :answer] = torch.randint(3, MASK, (answer,), generator=g)
    x0[0, answer] = EOS
    reveal = torch.full((1, length), -1, dtype=torch.int16)
    step = 0
    for start in range(0, real, 4):
        idx = list(range(start, min(start + 4, real)))
        for i in torch.randperm(len(idx), generator=g).tolist():
            reveal[0, idx[i]] = step
            step += 1
    return x0, reveal


def states(length, seed=0, **kw):
    x0, reveal = padded_row(length)
    cfg = StateConfig(block_size=4, mask_id=MASK, eos_id=EOS, **{"random_ratio": 0.0, "path_k_steps": 4} | kw)
    prompt, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool)
    return build_states(prompt, mask, x0, reveal, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["block_causal", "semi_ar"])
@pytest.mark.parametrize("order", ["trajectory", "reference"])
def test_no_padding_in_m_or_the_path_window(layout, order):
    seen_eos = False
    for seed in range(40):
        st = states(64, seed, layout=layout, state_order=order, random_ratio=0.2, random_vocab=(3, 30))
        assert st.padding[0, 6:].all() and not st.padding[0, :6].any()  # 5 tokens + EOS, 58 of padding
        assert not (st.supervised & st.padding).any()
        assert not (st.path & st.padding).any()
        assert not (st.randomized & st.padding).any()
        seen_eos |= bool(st.supervised[0, 5])  # the first EOS is a decoded token: supervised when masked
    assert seen_eos


def _ddo_terms(length, seed, **kw):
    st = states(length, seed, **kw)
    g = torch.Generator().manual_seed(1)
    student, ref = torch.randn(1, 64, V, generator=g), torch.randn(1, 64, V, generator=g)  # the same on shared columns
    _, metrics = t3d_objective(student[:, :length], ref[:, :length], st.targets, st.supervised, st.path, beta=1.0)
    return metrics, st


def test_ddo_log_ratios_do_not_change_when_more_padding_is_appended():
    for seed in range(5):
        short, st16 = _ddo_terms(16, seed)
        long, st64 = _ddo_terms(64, seed)
        assert torch.equal(st16.supervised, st64.supervised[:, :16])  # the same state on the answer's blocks
        for key in ("real_log_ratio", "fake_log_ratio", "ddo_real", "ddo_fake"):
            assert float(short[key]) == pytest.approx(float(long[key]), abs=1e-6), key
        assert int(short["path_tokens"]) == int(long["path_tokens"])


def test_supervise_padding_brings_the_old_behaviour_back():
    changed = 0
    for seed in range(5):
        st = states(64, seed, supervise_padding=True)
        assert (st.supervised & st.padding).any()  # padding supervised, as EOS
        assert (st.targets[st.padding] == EOS).all()
        short, _ = _ddo_terms(16, seed, supervise_padding=True)
        long, _ = _ddo_terms(64, seed, supervise_padding=True)
        changed += abs(float(short["real_log_ratio"]) - float(long["real_log_ratio"])) > 1e-4
    assert changed == 5  # appended padding dilutes every sequence's ℓ again
