"""The T3D objective and its ablations as pure functions (DESIGN.md section 5).

The objectives (`t3d.trainer.objectives`) call these on the log-probs they gather.
Every loss takes tensors and returns `(loss, metrics)`. A loss is a *sum* over its
supervised items (sequences for DDO, tokens for the cross-entropies) divided by an
explicit count. By default the count is the one in the batch at hand; under gradient
accumulation pass `normalizer=` the count of the whole optimiser step (all
micro-batches, all workers; see `normalizer_counts`), so that the sum of the
micro-batch losses equals the loss of the full batch exactly, gradients included.
Counts are clamped to at least 1, so an empty supervised set gives a loss of exactly 0
with zero (finite) gradients, never NaN.

Metrics are detached 0-d tensors (no host sync here; call `.item()` when logging),
averaged over the micro-batch at hand.

Log-probabilities arrive in float32 (`logprobs.ResponseLogProbs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Count = int | float | Tensor
Metrics = dict[str, float | Tensor]


def _divide(total: Tensor, count: Tensor, normalizer: Count | None) -> Tensor:
    """total / max(1, normalizer or count): sum-then-divide, 0 for an empty set."""
    denom = count if normalizer is None else torch.as_tensor(normalizer, device=total.device)
    return total / denom.to(total.dtype).clamp(min=1)


def _average(values: Tensor, mask: Tensor) -> Tensor:
    """Detached mean of `values` where `mask` (any matching shape), 0 when empty."""
    values = values.detach().float()
    return torch.where(mask, values, 0).sum() / mask.sum().clamp(min=1)


def _masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row mean of values (B, L) over mask (B, L) bool -> (mean (B,), count (B,)); 0 if empty."""
    count = mask.sum(dim=-1)  # (B,)
    total = torch.where(mask, values, 0).sum(dim=-1)  # (B,)
    return total / count.clamp(min=1), count


def ddo_loss(
    student_logp_real: Tensor,
    ref_logp_real: Tensor,
    student_logp_fake: Tensor,
    ref_logp_fake: Tensor,
    valid: Tensor,
    alpha: float,
    beta: float,
    normalizer: Count | None = None,
) -> tuple[Tensor, Metrics]:
    """Direct Discriminative Optimization with the student as implicit discriminator.

    All log-probability arguments are (B,) sequence-level ℓ (mean log-prob over M per row);
    `valid` (B,) bool marks rows with a non-empty supervised set. With the implicit
    discriminator d(y) = σ(β (ℓ_θ(y) - ℓ_ref(y))), per row

        L = -log σ(β r_real) - α log(1 - σ(β r_fake)),   r = ℓ_θ - ℓ_ref,

    written with logsigmoid (log(1 - σ(x)) = log σ(-x)) so it never overflows. The
    reference is a constant: its log-probs are detached. Summed over valid rows and
    divided by `normalizer` (default: the number of valid rows).

    Metrics: `real_log_ratio` / `fake_log_ratio` (mean r, in nats per token, before
    β; they show whether DDO moves at all), `ddo_real` / `ddo_fake` (the two terms,
    α included), `ddo_accuracy` (share of d(real) > 1/2 and d(fake) < 1/2; 0 at
    student = reference, where every ratio is exactly 0).
    """
    real_ratio = student_logp_real - ref_logp_real.detach()  # (B,)
    fake_ratio = student_logp_fake - ref_logp_fake.detach()  # (B,)
    real_term = -F.logsigmoid(beta * real_ratio)  # (B,)
    fake_term = -alpha * F.logsigmoid(-beta * fake_ratio)  # (B,)
    total = torch.where(valid, real_term + fake_term, 0).sum()
    loss = _divide(total, valid.sum(), normalizer)
    correct = ((real_ratio > 0).float() + (fake_ratio < 0).float()) / 2  # (B,)
    metrics: Metrics = {
        "real_log_ratio": _average(real_ratio, valid),
        "fake_log_ratio": _average(fake_ratio, valid),
        "ddo_real": _average(real_term, valid),
        "ddo_fake": _average(fake_term, valid),
        "ddo_accuracy": _average(correct, valid),
    }
    return loss, metrics


def masked_ce(logp: Tensor, mask: Tensor, normalizer: Count | None) -> tuple[Tensor, Tensor]:
    """Sum of -logp (B, L) over mask / count -> (loss, count)."""
    count = mask.sum()
    return _divide(torch.where(mask, -logp, 0).sum(), count, normalizer), count


def fkl_from_logprobs(
    log_p: Tensor, topk_logprobs: Tensor, mask: Tensor, normalizer: Count | None = None
) -> tuple[Tensor, Metrics]:
    """Forward KL from the student's log-probs of the teacher's k ids.

    log_p: (B, L, k) log p_θ(id_i) under the student's full-vocabulary softmax;
    topk_logprobs: (B, L, k) the teacher's; mask: (B, L) bool. The stored k ids carry only
    part of the teacher's mass, so q is the teacher renormalised over its k ids:
    q_i = exp(lp_i) / Σ_j exp(lp_j). p_θ is not renormalised, so the loss
    Σ_i q_i (log q_i - log p_θ(id_i)) ≥ 0 at each position, 0 only if p_θ puts all its mass
    on the k ids in the teacher's proportions. The stored top-k is undefined on padding
    after EOS: leave those positions out of `mask`. Token-level sum / count.
    """
    row = mask.unsqueeze(-1)  # (B, L, 1)
    teacher = torch.where(row, topk_logprobs.float(), 0)  # (B, L, k), garbage off-mask cleared
    log_q = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)  # (B, L, k)
    q = log_q.exp()
    per_id = torch.where(q > 0, q * (log_q - torch.where(row, log_p, 0)), 0)  # (B, L, k); 0·log 0 = 0
    count = mask.sum()
    loss = _divide(torch.where(mask, per_id.sum(-1), 0).sum(), count, normalizer)
    return loss, {"fkl": loss.detach(), "fkl_tokens": count}


def t3d_from_logprobs(
    student: Tensor,
    ref: Tensor,
    fake: Tensor,
    targets: Tensor,
    supervised: Tensor,
    path: Tensor,
    *,
    alpha: float,
    beta: float,
    lambda_path: float,
    seq_normalizer: Count | None = None,
    path_normalizer: Count | None = None,
    path_weight: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """T3D from gathered log-probs: student (B, L, 2) with grad and ref (B, L, 2) of the
    [real, fake] ids, fake (B, L) the fake answer, targets (B, L), supervised (M) and path
    (B, L) bool.

    ℓ is the mean log-prob over M per sequence; DDO averages over sequences with a
    non-empty M (`seq_normalizer`). The path loss is the cross-entropy against x0 on the
    path window, per token (`path_normalizer`: the step's path tokens); with `path_weight`
    (B, L) float it is Σ w·CE per sequence instead, averaged like DDO over sequences
    (`path_normalizer`: the step's sequences; the `paper` levels, `states.paper_path_weights`).
    The weights' defaults (the reference code's) are `ObjectiveConfig`'s. λ_path=0 is DDO alone
    (the path term is then still reported).

    Extra metrics: `ddo`, `path`, `loss`, and `fake_match` (share of M where the fake
    equals x0: DDO can only help where it is low).
    """
    s_real, count = _masked_mean(student[..., 0], supervised)  # (B,), (B,)
    s_fake, _ = _masked_mean(student[..., 1], supervised)
    r_real, _ = _masked_mean(ref[..., 0], supervised)
    r_fake, _ = _masked_mean(ref[..., 1], supervised)
    ddo, metrics = ddo_loss(s_real, r_real, s_fake, r_fake, count > 0, alpha, beta, seq_normalizer)
    if path_weight is None:
        path_ce, path_count = masked_ce(student[..., 0], path, path_normalizer)
    else:
        path_ce, path_count = _weighted_ce(student[..., 0], path_weight, path, path_normalizer)
    loss = ddo + lambda_path * path_ce
    metrics |= {
        "loss": loss.detach(),
        "ddo": ddo.detach(),
        "path": path_ce.detach(),
        "path_tokens": path.sum(),
        "fake_match": _average(fake == targets, supervised),
    }
    return loss, metrics


def _weighted_ce(logp: Tensor, weight: Tensor, path: Tensor, normalizer: Count | None) -> tuple[Tensor, Tensor]:
    """Σ weight · (-logp) (B, L) per sequence, over sequences with a path position / count."""
    per_row = torch.where(path, -logp * weight, 0).sum(dim=-1)  # (B,)
    rows = path.any(dim=-1)
    return _divide(per_row.sum(), rows.sum(), normalizer), rows.sum()


def _topk_mask(supervised: Tensor, padding: Tensor | None) -> Tensor:
    return supervised if padding is None else supervised & ~padding


def normalizer_counts(
    supervised: Tensor, path: Tensor | None = None, padding: Tensor | None = None
) -> dict[str, Tensor]:
    """The counts each objective divides by, for one micro-batch (masks (B, L) bool).

    Under gradient accumulation, sum these over the micro-batches of an optimiser step
    (and all-reduce over workers), then pass the totals as the normalizers: the step's loss
    is then exactly the full-batch loss. Known before the forward pass. "path_sequences"
    is the weighted path loss's count (rows with a path position).
    """
    counts = {"sequences": supervised.any(dim=-1).sum(), "supervised": supervised.sum()}
    zero = supervised.new_zeros((), dtype=torch.long)
    counts["path"] = path.sum() if path is not None else zero
    counts["path_sequences"] = path.any(dim=-1).sum() if path is not None else zero
    counts["topk"] = _topk_mask(supervised, padding).sum()
    return counts
