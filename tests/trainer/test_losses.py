"""Losses against the formulas on hand-computed numbers, and their invariants."""

import math

import pytest
import torch

from full_logits import (
    DEFAULTS, LogitsStudent, ce_loss, fake_tokens, fkl_loss, masked_mean_logprob, path_loss, run_objective, states_of,
    t3d_objective,
)  # fmt: skip

from t3d.trainer.build import Dist
from t3d.trainer.losses import ddo_loss
from t3d.trainer.objectives import OBJECTIVES, ObjectiveConfig
from t3d.trainer.states import StateConfig, build_states
from t3d.trainer.step import reduce_metrics


def log_sigmoid(x):
    return -math.log(1 + math.exp(-x))


def test_masked_mean_logprob_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]))
    mean, count = masked_mean_logprob(logits, torch.tensor([[0, 2, 1]]), torch.tensor([[True, False, True]]))
    assert count.tolist() == [2]
    assert mean.item() == pytest.approx((math.log(0.5) + math.log(0.2)) / 2, rel=1e-6)
    empty, count = masked_mean_logprob(logits, torch.tensor([[0, 2, 1]]), torch.zeros(1, 3, dtype=torch.bool))
    assert empty.tolist() == [0.0] and count.tolist() == [0]


def test_ddo_by_hand():
    s_real, r_real = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    s_fake, r_fake = torch.tensor([-2.0, -0.2, 9.0]), torch.tensor([-1.0, -0.7, 9.0])
    valid = torch.tensor([True, True, False])
    alpha, beta = 0.3, 0.7
    loss, m = ddo_loss(s_real, r_real, s_fake, r_fake, valid, alpha=alpha, beta=beta)
    rows = [(0.5, -1.0), (-1.0, 0.5)]  # (real ratio, fake ratio) of the valid rows
    real = [-log_sigmoid(beta * r) for r, _ in rows]
    fake = [-alpha * math.log(1 - 1 / (1 + math.exp(-beta * f))) for _, f in rows]
    assert loss.item() == pytest.approx((sum(real) + sum(fake)) / 2, rel=1e-6)
    assert m["ddo_real"].item() == pytest.approx(sum(real) / 2, rel=1e-6)
    assert m["ddo_fake"].item() == pytest.approx(sum(fake) / 2, rel=1e-6)
    assert m["real_log_ratio"].item() == pytest.approx(-0.25)
    assert m["fake_log_ratio"].item() == pytest.approx(-0.25)
    assert m["ddo_accuracy"].item() == pytest.approx(0.5)  # row 0 right twice, row 1 wrong twice
    loss4, _ = ddo_loss(s_real, r_real, s_fake, r_fake, valid, alpha=alpha, beta=beta, normalizer=4)
    assert loss4.item() == pytest.approx(loss.item() / 2, rel=1e-6)


def test_ddo_is_stable_for_large_ratios():
    big = torch.tensor([1e4, -1e4])
    loss, _ = ddo_loss(big, -big, -big, big, torch.tensor([True, True]), alpha=DEFAULTS.alpha, beta=1.0)
    assert torch.isfinite(loss)


def test_ddo_at_student_equals_reference():
    lp = torch.tensor([-1.3, -0.4, -2.2], requires_grad=True)
    fake = torch.tensor([-0.7, -0.1, -1.9], requires_grad=True)
    alpha, beta = 0.5, 0.1
    loss, m = ddo_loss(lp, lp.detach(), fake, fake.detach(), torch.ones(3, dtype=torch.bool), alpha, beta)
    assert loss.item() == pytest.approx((1 + alpha) * math.log(2), rel=1e-6)
    assert m["ddo_accuracy"].item() == 0.0
    loss.backward()
    assert torch.allclose(lp.grad, torch.full((3,), -beta / 2 / 3))  # descent raises log p(real)
    assert torch.allclose(fake.grad, torch.full((3,), alpha * beta / 2 / 3))  # and lowers log p(fake)


def test_t3d_step_moves_real_up_and_fake_down():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 5, 7, generator=gen)
    fake = ref.argmax(-1)
    targets = (fake + 1 + torch.randint(0, 6, fake.shape, generator=gen)) % 7  # real != fake
    supervised = torch.ones(2, 5, dtype=torch.bool)
    student = ref.clone().requires_grad_(True)
    kw = dict(alpha=0.5, beta=0.1, lambda_path=0.0)
    loss, m = t3d_objective(student, ref, targets, supervised, supervised, **kw)
    assert loss.item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert m["fake_match"].item() == 0.0
    loss.backward()
    stepped = (student - 10.0 * student.grad).detach()
    real_after, _ = masked_mean_logprob(stepped, targets, supervised)
    fake_after, _ = masked_mean_logprob(stepped, fake, supervised)
    real_before, _ = masked_mean_logprob(ref, targets, supervised)
    fake_before, _ = masked_mean_logprob(ref, fake, supervised)
    assert (real_after > real_before).all() and (fake_after < fake_before).all()


def test_empty_supervised_set_gives_zero_with_finite_grads():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    targets = torch.randint(0, 6, (2, 4))
    empty = torch.zeros(2, 4, dtype=torch.bool)
    topk_lp, topk_ids = torch.full((2, 4, 3), float("nan")), torch.full((2, 4, 3), -1)
    losses = [
        t3d_objective(logits, logits.detach(), targets, empty, empty)[0],
        path_loss(logits, targets, empty)[0],
        ce_loss(logits, targets, empty)[0],
        fkl_loss(logits, topk_lp, topk_ids, empty)[0],
        ddo_loss(*torch.zeros(4, 2).unbind(), torch.zeros(2, dtype=torch.bool), DEFAULTS.alpha, DEFAULTS.beta)[0],
    ]
    for loss in losses:
        assert loss.item() == 0.0
    sum(losses).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_fkl_by_hand():
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.log(p).view(1, 1, 3).repeat(1, 2, 1)
    topk_lp = torch.log(torch.tensor([[[0.6, 0.2], [0.6, 0.2]]])).half()  # renormalised: 0.75, 0.25
    topk_ids = torch.tensor([[[0, 2], [1, 0]]])
    mask = torch.tensor([[True, False]])
    loss, m = fkl_loss(logits, topk_lp, topk_ids, mask)
    expected = 0.75 * (math.log(0.75) - math.log(0.5)) + 0.25 * (math.log(0.25) - math.log(0.2))
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    assert m["fkl_tokens"].item() == 1
    # the renormalised teacher itself scores 0 when the student has no mass elsewhere
    exact = torch.log(torch.tensor([0.75, 1e-9, 0.25])).view(1, 1, 3).repeat(1, 2, 1)
    assert fkl_loss(exact, topk_lp, topk_ids, mask)[0].item() == pytest.approx(0.0, abs=1e-3)


def test_fake_tokens_only_change_masked_positions():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 9, generator=gen)
    targets = torch.randint(0, 9, (3, 6), generator=gen)
    mask = torch.rand(3, 6, generator=gen) < 0.5
    greedy = fake_tokens(logits, targets, mask)
    assert torch.equal(greedy[~mask], targets[~mask])
    assert torch.equal(greedy[mask], logits.argmax(-1)[mask])
    sample = lambda seed: fake_tokens(logits, targets, mask, 1.0, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(sample(2), sample(2)) and torch.equal(sample(2)[~mask], targets[~mask])
    peaked = fake_tokens(logits * 1e3, targets, mask, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(peaked, greedy)


def test_ce_equals_path_when_window_covers_everything():
    x0 = torch.tensor([[5, 6, 7, 2, 0, 0, 0, 0], [5, 5, 6, 6, 7, 7, 8, 8]])
    reveal = torch.tensor([[1, 0, 3, 2, -1, -1, -1, -1], [0, 1, 1, 0, 2, 3, 2, 3]])
    cfg = StateConfig(block_size=4, mask_id=1, eos_id=2, random_ratio=0.0, path_k_steps=100)
    st = build_states(torch.tensor([[3], [4]]), torch.ones(2, 1, dtype=torch.bool), x0, reveal, cfg)
    assert torch.equal(st.path, st.supervised)
    logits = torch.randn(2, 8, 10)
    ce = ce_loss(logits, st.targets, st.supervised)[0]
    assert path_loss(logits, st.targets, st.path)[0].item() == pytest.approx(ce.item())
    narrow = build_states(*(torch.tensor([[3], [4]]), torch.ones(2, 1, dtype=torch.bool)), x0, reveal,
                          StateConfig(block_size=4, mask_id=1, eos_id=2, random_ratio=0.0, path_k_steps=1))  # fmt: skip
    assert (narrow.path & ~narrow.supervised).sum() == 0 and narrow.path.sum() < narrow.supervised.sum()


def _grads(kind, micro_batches):
    """Gradients of a tiny linear student and the step's metrics after accumulating the registered
    objective `kind` over micro-batches (full logits behind `ResponseLogProbs`'s interface)."""
    gen = torch.Generator().manual_seed(0)
    n, length, dim, vocab, k = 4, 6, 5, 11, 3
    feats = torch.randn(n, length, dim, generator=gen)
    ref_net, net = torch.nn.Linear(dim, vocab), torch.nn.Linear(dim, vocab)
    for p in [*ref_net.parameters(), *net.parameters()]:
        p.data = torch.randn(p.shape, generator=gen)
    targets = torch.randint(0, vocab, (n, length), generator=gen)
    supervised = torch.rand(n, length, generator=gen) < 0.6
    supervised[2] = False  # a row with nothing supervised
    path = supervised & (torch.rand(n, length, generator=gen) < 0.5)
    padding = torch.zeros(n, length, dtype=torch.bool)
    padding[0, -2:] = True
    topk_lp = torch.log_softmax(torch.randn(n, length, k, generator=gen), -1)
    topk_ids = torch.randint(0, vocab, (n, length, k), generator=gen)
    rows_of = torch.arange(n)[:, None].expand(n, length)  # input ids: the row, so logits_of finds its features
    student, reference = LogitsStudent(lambda ids: net(feats[ids[:, 0]])), LogitsStudent(lambda ids: ref_net(feats[ids[:, 0]]))
    totals = OBJECTIVES[kind].counts(states_of(targets, supervised, path, padding))
    parts = []
    for rows in torch.arange(n).chunk(micro_batches):
        states = states_of(targets[rows], supervised[rows], path[rows], padding[rows], input_ids=rows_of[rows])
        loss, metrics = run_objective(kind, states, student, reference, totals if micro_batches > 1 else None,
                                      topk_ids[rows], topk_lp[rows])  # fmt: skip
        loss.backward()
        parts.append(metrics)
    return [p.grad for p in net.parameters()], reduce_metrics(parts, Dist())


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_accumulation_equals_full_batch(kind):
    """Gradients and every metric of the step: the registered objective under 4 micro-batches equals one batch."""
    (full, m_full), (accumulated, m_acc) = _grads(kind, 1), _grads(kind, 4)
    for a, b in zip(full, accumulated):
        assert a.abs().sum() > 0
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert "loss" in m_full and sorted(m_full) == sorted(m_acc)
    for key in m_full:
        assert m_acc[key] == pytest.approx(m_full[key], rel=1e-5, abs=1e-6), key


def test_accumulation_without_global_counts_is_not_exact():
    """The check above can fail: per-micro-batch counts give a different gradient."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=gen, requires_grad=True)
    targets = torch.randint(0, 5, (2, 4), generator=gen)
    mask = torch.tensor([[True, False, False, False], [True, True, True, False]])
    ce_loss(logits, targets, mask)[0].backward()
    full = logits.grad.clone()
    logits.grad = None
    for r in range(2):
        ce_loss(logits[r : r + 1], targets[r : r + 1], mask[r : r + 1])[0].backward()
    assert not torch.allclose(full, logits.grad)


def test_objective_config_checks():
    with pytest.raises(ValueError, match="unknown objective"):
        ObjectiveConfig(kind="dpo")
    with pytest.raises(ValueError):
        ObjectiveConfig(beta=0.0)
