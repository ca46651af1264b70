"""`--preset paper`: the official T3D recipe (Tyrion58/T3D train/prepare.py, self_ddo_sdar_full.py)."""

import math

import pytest
import torch
from t3d_test_support import random_trajectories

from t3d.trainer.config import build_config, load_config
from t3d.trainer.losses import t3d_from_logprobs
from t3d.trainer.states import StateConfig, build_states

MASK, EOS, PAD, VOCAB = 99, 2, 0, (10, 50)


def paper_cfg(**kw):
    return StateConfig(block_size=8, mask_id=MASK, eos_id=EOS, pad_id=PAD, state_order="paper", random_ratio=0.1,
                       random_vocab=VOCAB, random_count="exact", path_mode="levels", path_k_steps=4,
                       padding_shows="pad", **kw)  # fmt: skip


def official_row(x0, reveal, ratio, block=8, k=4):
    """The official rule by plain loops (prepare.collect_training_data, compute_path_loss_from_step_map):
    M, the number of random tokens and the path weights of one row, ratio given."""
    length = len(x0)
    masked, weights, levels = [False] * length, [0.0] * length, []
    for start in range(0, length, block):
        idx = [i for i in range(start, start + block) if reveal[i] >= 0]  # valid: decoded positions
        order = sorted(idx, key=lambda i: (reveal[i], i))  # decode order (ties by position)
        for i in order[: int(len(order) * ratio)]:
            masked[i] = True
    for s in range(math.ceil(block / k)):
        level = []
        for start in range(0, length, block):
            idx = sorted((i for i in range(start, start + block) if reveal[i] >= 0), key=lambda i: (reveal[i], i))
            level += idx[: min((s + 1) * k, len(idx))]
        levels.append(level)
    nonempty = [lv for lv in levels if lv]
    if any(masked):  # rows with an empty M are dropped by the official code
        for level in nonempty:
            for i in level:
                weights[i] += 1 / len(level) / len(nonempty)
    m = sum(masked)
    n_random = min(max(1, int(m * 0.1)), m) if m else 0
    return masked, n_random, weights


def test_paper_states_equal_the_official_rule_by_brute_force():
    x0, reveal = random_trajectories(600, 4, 4, seed=0)  # rollouts of block 4, trained in blocks of 8
    prompt, pmask = torch.tensor([[5, 6, 7]]).repeat(600, 1), torch.ones(600, 3, dtype=torch.bool)
    st = build_states(prompt, pmask, x0, reveal, paper_cfg(), torch.Generator().manual_seed(0))
    ratios = {}
    for r in range(600):
        ratio = float(st.mask_ratio[r])
        ratios[ratio] = ratios.get(ratio, 0) + 1
        masked, n_random, weights = official_row(x0[r].tolist(), reveal[r].tolist(), ratio)
        assert st.supervised[r].tolist() == masked, r
        assert int(st.randomized[r].sum()) == n_random and not (st.randomized[r] & ~st.supervised[r]).any()
        torch.testing.assert_close(st.path_weight[r], torch.tensor(weights), atol=1e-6, rtol=0)
        assert st.path[r].tolist() == [w > 0 for w in weights]
        pad = reveal[r] < 0
        assert (st.noisy[r][pad] == PAD).all() and (st.noisy[r][st.supervised[r] & ~st.randomized[r]] == MASK).all()
        shown = ~st.supervised[r] & ~pad
        assert torch.equal(st.noisy[r][shown], x0[r][shown])
    weights = {1.0: 1.0, 0.75: 0.75**8, 0.5: 0.5**8, 0.25: 0.25**8}  # one draw per sequence
    total = sum(weights.values())
    assert set(ratios) <= set(weights) and abs(ratios[1.0] / 600 - 1 / total) < 0.04


def test_paper_path_loss_on_hand_computed_numbers():
    # one block of 8: six decoded tokens (reveal order: positions 1, 3, 5, 0, 4, 2), then padding
    x0 = torch.tensor([[11, 12, 13, 14, 15, EOS, PAD, PAD]])
    reveal = torch.tensor([[3, 0, 5, 1, 4, 2, -1, -1]])
    cfg = StateConfig(block_size=8, mask_id=MASK, eos_id=EOS, pad_id=PAD, state_order="paper", random_ratio=0.0,
                      path_mode="levels", path_k_steps=4, padding_shows="pad")  # fmt: skip
    st = build_states(torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.bool), x0, reveal, cfg,
                      torch.Generator().manual_seed(0))  # fmt: skip
    ce = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])  # -log p(x0) per position
    student = torch.stack([-ce, -ce], dim=-1)
    _, metrics = t3d_from_logprobs(student, student.detach(), x0, st.targets, st.supervised, st.path, alpha=0.5, beta=0.1,
                                   lambda_path=0.2, path_weight=st.path_weight)  # fmt: skip
    level0 = (2 + 4 + 6 + 1) / 4  # the first 4 in decode order: positions 1, 3, 5, 0
    level1 = (1 + 2 + 3 + 4 + 5 + 6) / 6  # the first min(8, 6): all six decoded, no padding
    assert float(metrics["path"]) == pytest.approx((level0 + level1) / 2)  # 3.375


def test_paper_preset_resolves_the_official_optimiser_and_batch():
    cfg = load_config(None, {"model": "/x", "preset": "paper"})
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.decay_all, cfg.optim.min_lr_ratio) == (1e-5, 0.01, True, 0.1)
    assert cfg.rows_per_step == 256 and cfg.train.grad_accum == 256 // cfg.train.batch_size
    assert (cfg.reference.round_every, cfg.model.block_size, cfg.train.epochs) == (10, 8, 30)
    assert (cfg.states.state_order, cfg.states.path_mode, cfg.states.random_count) == ("paper", "levels", "exact")
    assert load_config(None, {"model": "/x", "preset": "paper", "batch_size": 4}).train.grad_accum == 64
    from t3d.dllm.errors import UserError

    with pytest.raises(UserError, match="not a multiple"):
        build_config({"preset": "paper", "batch_size": 3})


def test_paper_preset_trains_in_the_loop(kit, teachers, datasets, tmp_path):
    from t3d.trainer.loop import build_trainer, train_step

    for family in ("bidirectional", "block_causal"):
        flags = kit.flags(datasets[family], teachers[family], tmp_path / family, preset="paper", global_batch=8,
                          batch_size=4, epochs=1, lr=1e-3)  # fmt: skip
        trainer = build_trainer(build_config(flags), log=lambda *a: None)
        assert trainer.states.block_size == 8 and trainer.cfg.train.max_steps == 6  # 48 rows / 8
        metrics = train_step(trainer, [trainer.loader.next_batch() for _ in range(2)])
        assert math.isfinite(metrics["loss"]) and metrics["path"] > 0 and metrics["grad_norm"] > 0
        assert trainer.scheduler.get_last_lr()[0] > 0


def test_block_8_over_absolute_rollouts_of_block_4_gets_padding_columns():
    """SDAR: a prompt of 7 leaves 3 columns undecoded at block 4; at absolute blocks of 8 the tail is 7,
    so the response needs columns past L: `pad_columns` gives them, and no decoded token is lost."""
    from t3d.dllm.errors import UserError

    x0 = torch.tensor([list(range(10, 23)) + [PAD] * 3])  # 13 decoded tokens, the last 3 columns never decoded
    reveal = torch.tensor([list(range(13)) + [-1] * 3])
    prompt, pmask = torch.tensor([[3, 4, 5, 6, 7, 8, 9]]), torch.ones(1, 7, dtype=torch.bool)
    base = dict(block_size=8, mask_id=MASK, eos_id=EOS, pad_id=PAD, absolute_blocks=True, random_ratio=0.0)
    with pytest.raises(UserError, match="last 7 columns"):
        build_states(prompt, pmask, x0, reveal, StateConfig(**base))
    st = build_states(prompt, pmask, x0, reveal, StateConfig(**base, pad_columns=8), torch.Generator().manual_seed(0))
    assert int(st.shift[0]) == 7 and st.targets.shape[1] == 24
    assert st.targets[0, 7:20].tolist() == list(range(10, 23))  # every decoded token, in place
    assert not (st.supervised & st.padding).any()
