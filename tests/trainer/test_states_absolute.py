"""Training states with blocks at absolute positions (SDAR), against brute force and the decoder's own input.

Under absolute blocks a prompt of n tokens ends with a tail of r = n mod B tokens that shares
the first response block; the sampler decodes response positions [0, L - r) and leaves the last
r columns as padding. The states must show that tail inside the first noisy block, and a noisy
block must be exactly what the model sees when the decoder works on that block at that step.
"""

import dataclasses
import random

import pytest
import torch

from t3d.dllm import UserError, load_model
from t3d.dllm.tiny import build_checkpoint
from t3d.trainer.states import StateConfig, build_states

MASK, EOS, VOCAB = 63, 2, (3, 60)
B, L, P = 4, 12, 11


def absolute_trajectories(prompt_lengths, seed):
    """Rollouts as an absolute-block decoder leaves them: row i decodes [0, L - r_i), r_i = n_i mod B,
    in blocks [0, B - r_i), [B - r_i, 2B - r_i), ...; each block in a random order, 1-2 tokens a step;
    some rows stop at an EOS; the last r_i columns are padding (reveal -1)."""
    rng = random.Random(seed)
    x0, reveal = [], []
    for n in prompt_lengths:
        r = n % B
        region = L - r
        tokens = [rng.randrange(*VOCAB) for _ in range(L)]
        steps = [-1] * L
        bounds = [0, *range(B - r, region, B), region] if r else list(range(0, region + 1, B))
        start = 0
        for lo, hi in zip(bounds, bounds[1:]):
            per = rng.randint(1, 2)
            perm = list(range(hi - lo))
            rng.shuffle(perm)
            for k, p in enumerate(perm):
                steps[lo + k] = start + p // per
            start = max(steps[lo:hi]) + 1
        end = region
        if rng.random() < 0.5:
            eos = rng.randrange(region)
            tokens[eos] = EOS
            end = eos + 1
        for i in range(end, L):
            tokens[i], steps[i] = 0, -1
        x0.append(tokens)
        reveal.append(steps)
    return torch.tensor(x0), torch.tensor(reveal, dtype=torch.int16)


def left_padded(prompt_lengths, seed):
    rng = random.Random(seed + 1)
    ids, mask = torch.zeros(len(prompt_lengths), P, dtype=torch.long), torch.zeros(len(prompt_lengths), P, dtype=torch.bool)
    for i, n in enumerate(prompt_lengths):
        ids[i, P - n :] = torch.tensor([rng.randrange(*VOCAB) for _ in range(n)])
        mask[i, P - n :] = True
    return ids, mask


LENGTHS = (7, 4, 5, 1, 11, 9, 2, 8)  # every tail length 0..3, up to 3 prompt blocks, left padding


def states(seed=0, lengths=LENGTHS, **kw):
    x0, reveal = absolute_trajectories(lengths, seed)
    ids, mask = left_padded(lengths, seed)
    cfg = StateConfig(block_size=B, mask_id=MASK, eos_id=EOS, absolute_blocks=True,
                      **{"random_ratio": 0.0, "random_vocab": VOCAB} | kw)  # fmt: skip
    return x0, reveal, ids, mask, build_states(ids, mask, x0, reveal, cfg, torch.Generator().manual_seed(seed))


def brute_columns(n, prompt, x0, reveal):
    """Per section column (position, token, effective reveal or None for the tail), by plain loops."""
    r = n % B
    end = 1 + max(reveal)
    last_real = max((n + i) // B for i, s in enumerate(reveal) if s >= 0)
    cols = []
    for c in range(L):
        pos = n - r + c
        if pos < n:
            cols.append((pos, prompt[pos], None))
            continue
        i = pos - n
        step = reveal[i] if reveal[i] >= 0 else end + pos // B - last_real
        cols.append((pos, x0[i] if reveal[i] >= 0 else EOS, step))
    return cols


@pytest.mark.parametrize("order", ["trajectory", "reference"])
def test_noisy_copy_matches_brute_force(order):
    x0, reveal, ids, mask, st = states(seed=3, state_order=order)
    for row, n in enumerate(LENGTHS):
        prompt = ids[row, P - n :].tolist()
        cols = brute_columns(n, prompt, x0[row].tolist(), reveal[row].tolist())
        assert int(st.shift[row]) == n % B
        for c, (pos, token, step) in enumerate(cols):
            assert int(st.targets[row, c]) == token, (row, c)
            if step is None:  # the prompt's tail: shown, never supervised
                assert st.tail[row, c] and int(st.noisy[row, c]) == token and not st.supervised[row, c]
                continue
            assert not st.tail[row, c]
            decoded = pos - n < len(reveal[row]) and reveal[row][pos - n] >= 0
            if order == "trajectory":
                s = int(st.state_step[row, c // B])
                assert bool(st.supervised[row, c]) == (step >= s and decoded), (row, c)
                assert int(st.noisy[row, c]) == (MASK if step >= s else token)
            assert not st.supervised[row, c] or decoded  # padding (after EOS, or never decoded) is never in M
            assert not st.supervised[row, c] or int(st.noisy[row, c]) == MASK
        if order == "trajectory":  # the state step lies in the steps the teacher spent on the block
            for j in range(L // B):
                real = [s for p, t, s in cols[j * B : (j + 1) * B] if s is not None]
                assert min(real) <= int(st.state_step[row, j]) <= max(real)


def brute_allowed(n, length):
    """Allowed (query, key) for [whole prompt blocks | clean | noisy] of one row by plain loops; the
    prompt columns keep their place, the tail's columns there become padding."""
    r = n % B
    head = n - r
    columns = [("pad", None)] * (P - n) + [("prompt", q) for q in range(head)] + [("pad", None)] * r
    columns += [("clean", head + c) for c in range(length)] + [("noisy", head + c) for c in range(length)]
    out = []
    for qi, (qp, qpos) in enumerate(columns):
        row = []
        for ki, (kp, kpos) in enumerate(columns):
            if qp == "pad" or kp == "pad":
                row.append(qi == ki and qp == "pad")
                continue
            qb, kb = qpos // B, kpos // B
            if kp == "noisy":
                row.append(qp == "noisy" and qb == kb)
            elif qp == "noisy":
                row.append(kb < qb)
            else:
                row.append(kb <= qb)
        out.append(row)
    return out


def test_attention_and_positions_match_brute_force():
    _, _, _, _, st = states(seed=1)
    for row, n in enumerate(LENGTHS):
        allowed = (st.attention_bias[row, 0] == 0).tolist()
        assert allowed == brute_allowed(n, L), f"row {row} (prompt {n})"
        head = n - n % B
        assert st.position_ids[row, P:].tolist() == [head + c for c in range(L)] * 2
        assert st.position_ids[row, P - n : P - n + head].tolist() == list(range(head))


@pytest.fixture(scope="module")
def absolute_model(tmp_path_factory):
    """A tiny block-causal Llama run as a family with SDAR's absolute block alignment."""
    path = build_checkpoint(tmp_path_factory.mktemp("abs") / "m", "block_causal", vocab_size=64,
                            max_position_embeddings=64, seed=4)  # fmt: skip
    model = load_model(path)
    model.family = dataclasses.replace(model.family, absolute_blocks=True)
    return model


def test_a_noisy_block_is_what_the_decoder_feeds_at_that_step(absolute_model):
    """Block-causal invariance: the training forward's logits on noisy block j equal the model's
    logits on the decoder's input at that step (prompt, clean earlier blocks, block j as in the
    state; nothing after it), at absolute positions, on an unpadded row."""
    model = absolute_model
    x0, reveal, ids, mask, st = states(seed=5, random_ratio=0.2)
    with torch.no_grad():
        train = model.logits_with_bias(st.input_ids, st.attention_bias, st.position_ids)[:, -L:]  # (N, L, V)
    worst = 0.0
    for row, n in enumerate(LENGTHS):
        head = n - n % B
        prompt = ids[row, P - n :]
        for j in range(L // B):
            cols = slice(j * B, (j + 1) * B)
            seq = torch.cat([prompt[:head], st.targets[row, : j * B], st.noisy[row, cols]])  # the decoder's input
            with torch.no_grad():
                logits = model.logits(seq[None], prompt_len=n, block_size=B)[0, -B:]
            worst = max(worst, float((logits - train[row, cols]).abs().max()))
    assert worst <= 1e-5, f"max |diff| {worst}"


def test_relative_layout_differs_where_the_prompt_has_a_tail(absolute_model):
    """The same rows with relative blocks give other noisy inputs (the check above can fail)."""
    *_, absolute = states(seed=5)
    x0, reveal = absolute_trajectories(LENGTHS, 5)
    ids, mask = left_padded(LENGTHS, 5)
    cfg = StateConfig(block_size=B, mask_id=MASK, eos_id=EOS, random_ratio=0.0)
    relative = build_states(ids, mask, x0, reveal, cfg, torch.Generator().manual_seed(5))
    has_tail = absolute.shift > 0
    assert not torch.equal(absolute.input_ids[has_tail], relative.input_ids[has_tail])
    assert torch.equal(relative.shift, torch.zeros_like(relative.shift)) and not relative.tail.any()


def test_tokens_past_the_decoded_region_are_refused():
    """Data decoded with relative blocks holds tokens where an absolute decoder leaves padding."""
    x0, reveal = absolute_trajectories(LENGTHS, 0)
    reveal[0, -1] = 3  # prompt of 7 tokens: its last 3 columns must be padding
    x0[0, -1] = 10
    ids, mask = left_padded(LENGTHS, 0)
    cfg = StateConfig(block_size=B, mask_id=MASK, eos_id=EOS, absolute_blocks=True, random_ratio=0.0)
    with pytest.raises(UserError, match="trajectory row 0 has response tokens in its last 3 columns"):
        build_states(ids, mask, x0, reveal, cfg)
