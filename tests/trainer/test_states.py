"""Training states against brute-force constructions written as plain loops."""

import random

import pytest
import torch
from t3d_test_support import random_trajectories

from t3d.trainer.states import StateConfig, build_states

MASK, EOS, PAD, VOCAB = 99, 2, 0, (10, 50)


def prompts(n, length, seed):
    """Left-padded prompts of random lengths 1..length."""
    rng = random.Random(seed)
    ids, mask = torch.zeros(n, length, dtype=torch.long), torch.zeros(n, length, dtype=torch.bool)
    for r in range(n):
        k = rng.randint(1, length)
        ids[r, length - k :] = torch.tensor([rng.randrange(*VOCAB) for _ in range(k)])
        mask[r, length - k :] = True
    return ids, mask


def brute_row(x0, reveal, size=4):
    """(targets, effective reveal) of one row by plain loops: padding is revealed at
    E = 1 + last step in the EOS block, at E + 1, E + 2, ... in later blocks."""
    end = 1 + max(reveal)
    last_block = max(i // size for i, r in enumerate(reveal) if r >= 0)
    eff = [r if r >= 0 else end + i // size - last_block for i, r in enumerate(reveal)]
    targets = [x if r >= 0 else EOS for x, r in zip(x0, reveal)]
    return targets, eff


def brute_range(eff, reveal, block, j):
    idx = range(j * block, (j + 1) * block)
    lo = min(eff[i] for i in idx)
    real = [eff[i] for i in idx if reveal[i] >= 0]
    return lo, (max(real) if real else lo)


def make(n=64, blocks=4, size=4, seed=0, **kw):
    x0, reveal = random_trajectories(n, blocks, size, seed)
    p_ids, p_mask = prompts(n, 5, seed)
    cfg = StateConfig(block_size=size, mask_id=MASK, eos_id=EOS, **{"random_ratio": 0.0} | kw)
    st = build_states(p_ids, p_mask, x0, reveal, cfg, torch.Generator().manual_seed(seed))
    return x0.tolist(), reveal.tolist(), p_ids, p_mask, cfg, st


@pytest.mark.parametrize("k_steps", [1, 3])
def test_block_view_matches_brute_force(k_steps):
    x0, reveal, p_ids, p_mask, cfg, st = make(path_k_steps=k_steps)
    size, length = cfg.block_size, len(x0[0])
    for r in range(len(x0)):
        targets, eff = brute_row(x0[r], reveal[r], cfg.block_size)
        noisy, path = [], []
        for j in range(length // size):
            s = int(st.state_step[r, j])
            lo, hi = brute_range(eff, reveal[r], size, j)
            assert lo <= s <= hi
            for i in range(j * size, (j + 1) * size):
                noisy.append(MASK if eff[i] >= s else targets[i])
                path.append(s <= eff[i] < s + k_steps)
        assert st.targets[r].tolist() == targets
        real = [v >= 0 for v in reveal[r]]  # padding after the first EOS is never supervised
        assert st.noisy[r].tolist() == noisy
        assert st.supervised[r].tolist() == [t == MASK and ok for t, ok in zip(noisy, real)]
        assert st.path[r].tolist() == [p and ok for p, ok in zip(path, real)]
        assert st.input_ids[r].tolist() == p_ids[r].tolist() + targets + noisy
    assert st.response_start == p_ids.shape[1] + length and st.current_block is None


def test_trajectory_steps_cover_the_block_uniformly():
    x0, reveal = random_trajectories(1, 3, 4, seed=3, max_per_step=1)
    n = 4000
    cfg = StateConfig(block_size=4, mask_id=MASK, eos_id=EOS, random_ratio=0.0)
    p_ids, p_mask = prompts(n, 3, 0)
    st = build_states(p_ids, p_mask, x0.repeat(n, 1), reveal.repeat(n, 1), cfg, torch.Generator().manual_seed(1))
    _, eff = brute_row(x0[0].tolist(), reveal[0].tolist())
    for j in range(3):
        lo, hi = brute_range(eff, reveal[0].tolist(), 4, j)
        counts = torch.bincount(st.state_step[:, j] - lo, minlength=hi - lo + 1)
        assert len(counts) == hi - lo + 1  # never outside [lo, hi]
        assert (counts.float() / n - 1 / (hi - lo + 1)).abs().max() < 0.04  # lo: nothing revealed yet


def test_semi_ar_state_is_the_teachers_global_state():
    x0, reveal, p_ids, p_mask, cfg, st = make(layout="semi_ar", path_k_steps=2)
    size = cfg.block_size
    assert st.response_start == p_ids.shape[1] and st.input_ids.shape[1] == p_ids.shape[1] + len(x0[0])
    for r in range(len(x0)):
        targets, eff = brute_row(x0[r], reveal[r], cfg.block_size)
        c, s = int(st.current_block[r]), int(st.state_step[r, 0])
        lo, hi = brute_range(eff, reveal[r], size, c)
        assert lo <= s <= hi and st.state_step[r].eq(s).all()
        state = [MASK if e >= s else t for e, t in zip(eff, targets)]  # what the teacher saw at step s
        in_block = [i // size == c and v >= 0 for i, v in enumerate(reveal[r])]  # no padding in M
        assert any(in_block)  # the current block always holds a decoded token
        assert st.noisy[r].tolist() == state
        assert st.supervised[r].tolist() == [b and t == MASK for b, t in zip(in_block, state)]
        assert st.path[r].tolist() == [b and s <= e < s + 2 for b, e in zip(in_block, eff)]
    assert set(st.current_block.tolist()) == {0, 1, 2, 3}


def test_reference_order_masks_first_revealed_tokens():
    x0, reveal, _, _, cfg, st = make(n=1500, state_order="reference")
    size, counts = cfg.block_size, {}
    for r in range(len(x0)):
        _, eff = brute_row(x0[r], reveal[r], cfg.block_size)
        for j in range(len(eff) // size):
            idx = list(range(j * size, (j + 1) * size))
            masked = [i for i in idx if st.noisy[r, i] == MASK]
            assert [bool(st.supervised[r, i]) for i in masked] == [reveal[r][i] >= 0 for i in masked]
            first = sorted(idx, key=lambda i: (eff[i], i))[: len(masked)]
            assert sorted(masked) == sorted(first)
            assert int(st.state_step[r, j]) == min(eff[i] for i in idx)
            counts[len(masked)] = counts.get(len(masked), 0) + 1
    total = sum(counts.values())
    weights = {4: 1.0, 3: 0.75**8, 2: 0.5**8, 1: 0.25**8}
    for n_masked, w in weights.items():
        assert abs(counts.get(n_masked, 0) / total - w / sum(weights.values())) < 0.02
    assert set(counts) <= set(weights)


@pytest.mark.parametrize("layout", ["block_causal", "semi_ar"])
def test_random_ratio_share_and_targets(layout):
    x0, reveal, _, _, cfg, st = make(n=400, blocks=4, size=8, layout=layout, random_ratio=0.1, random_vocab=VOCAB)
    assert not (st.randomized & ~st.supervised).any()
    share = st.randomized.sum() / st.supervised.sum()
    assert abs(share.item() - 0.1) < 0.02, share
    rnd = st.noisy[st.randomized]
    assert ((rnd >= VOCAB[0]) & (rnd < VOCAB[1])).all()
    assert (st.noisy[st.supervised & ~st.randomized] == MASK).all()
    # targets stay x0; clean copy of the block-causal layout shows x0, not random tokens
    assert st.targets.tolist() == [brute_row(a, b)[0] for a, b in zip(x0, reveal)]


def brute_allowed(p_mask, length, size):
    """Boolean attention pattern of [prompt | clean | noisy] by plain loops."""
    p = len(p_mask)
    t = p + 2 * length
    real = list(p_mask) + [True] * (2 * length)

    def where(i):  # (part, block)
        if i < p:
            return "prompt", -1
        if i < p + length:
            return "clean", (i - p) // size
        return "noisy", (i - p - length) // size

    out = [[False] * t for _ in range(t)]
    for q in range(t):
        qp, qb = where(q)
        for k in range(t):
            kp, kb = where(k)
            ok = kp == "prompt"
            ok |= qp == "clean" and kp == "clean" and kb <= qb
            ok |= qp == "noisy" and kp == "clean" and kb < qb
            ok |= qp == "noisy" and kp == "noisy" and kb == qb
            out[q][k] = ok and real[q] and real[k]
        if not real[q]:
            out[q][q] = True  # padding rows attend to themselves only
    return out


def test_block_causal_mask_matches_brute_force():
    _, _, p_ids, p_mask, cfg, st = make(n=6, blocks=3, size=2)
    length = 6
    assert st.attention_bias.shape == (6, 1, p_ids.shape[1] + 2 * length, p_ids.shape[1] + 2 * length)
    for r in range(6):
        allowed = st.attention_bias[r, 0] == 0
        assert allowed.tolist() == brute_allowed(p_mask[r].tolist(), length, cfg.block_size)
        assert set(st.attention_bias[r].unique().tolist()) <= {0.0, torch.finfo(torch.float32).min}
    assert not torch.softmax(st.attention_bias, dim=-1).isnan().any()


def test_positions_noisy_copy_shares_clean_positions():
    _, _, p_ids, p_mask, _, st = make(n=8, blocks=3, size=2)
    p, length = p_ids.shape[1], 6
    clean, noisy = st.position_ids[:, p : p + length], st.position_ids[:, p + length :]
    assert torch.equal(clean, noisy)
    n_prompt = p_mask.sum(-1, keepdim=True)
    assert torch.equal(clean, n_prompt + torch.arange(length))
    real_prompt = st.position_ids[:, :p][p_mask]
    assert torch.equal(real_prompt, torch.cat([torch.arange(int(k)) for k in n_prompt]))


def test_seed_fixes_states():
    *_, a = make(seed=5, random_ratio=0.1, random_vocab=VOCAB)
    x0, reveal = random_trajectories(64, 4, 4, 5)
    p_ids, p_mask = prompts(64, 5, 5)
    cfg = StateConfig(block_size=4, mask_id=MASK, eos_id=EOS, random_ratio=0.1, random_vocab=VOCAB)
    b = build_states(p_ids, p_mask, x0, reveal, cfg, torch.Generator().manual_seed(5))
    c = build_states(p_ids, p_mask, x0, reveal, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)


def test_config_checks():
    with pytest.raises(ValueError, match="random_vocab"):
        StateConfig(block_size=4, mask_id=MASK, eos_id=EOS, random_ratio=0.1)
    with pytest.raises(ValueError, match="multiple"):
        x0, reveal = random_trajectories(2, 2, 4, 0)
        cfg = StateConfig(block_size=3, mask_id=MASK, eos_id=EOS, random_ratio=0.0)
        build_states(*prompts(2, 3, 0), x0, reveal, cfg)


def test_one_states_config_validated_in_one_place():
    """The trainer's StateConfig is the user's StatesConfig plus what the model fixes: every
    setting carried over, and one check (the flag's words) whichever is built."""
    import dataclasses

    from t3d.dllm.errors import UserError
    from t3d.trainer.states import StatesConfig

    settings = StatesConfig(state_order="paper", random_ratio=0.3, path_k_steps=2, supervise_padding=True,
                            random_count="exact", path_mode="levels", padding_shows="pad", fixed_states=True)  # fmt: skip
    cfg = StateConfig.of(settings, block_size=4, mask_id=MASK, eos_id=EOS, random_vocab=VOCAB)
    assert all(getattr(cfg, f.name) == getattr(settings, f.name) for f in dataclasses.fields(StatesConfig))
    for bad in ({"state_order": "random"}, {"random_count": "most"}, {"random_ratio": 1.5}, {"path_k_steps": 0}):
        with pytest.raises(UserError) as flag:
            StatesConfig(**bad)
        with pytest.raises(UserError) as state:
            StateConfig(block_size=4, mask_id=MASK, eos_id=EOS, random_vocab=VOCAB, **bad)
        assert str(state.value) == str(flag.value) and str(flag.value).startswith("--")
