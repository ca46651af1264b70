"""The T3D objective and its ablations as pure functions (DESIGN.md section 5).

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

Log-probabilities are computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Callable

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


def gather_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log p(id) under softmax(logits) for several ids per position.

    logits: (B, L, V); ids: (B, L, k) int. Returns (B, L, k) float32. One logsumexp
    serves all k ids, so the real and fake answers of DDO cost one pass over V.
    """
    logits = logits.float()  # (B, L, V)
    picked = logits.gather(-1, ids.long())  # (B, L, k)
    return picked - torch.logsumexp(logits, dim=-1, keepdim=True)


def _masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row mean of values (B, L) over mask (B, L) bool -> (mean (B,), count (B,)); 0 if empty."""
    count = mask.sum(dim=-1)  # (B,)
    total = torch.where(mask, values, 0).sum(dim=-1)  # (B,)
    return total / count.clamp(min=1), count


def masked_mean_logprob(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """ℓ(y | x_s): the mean over supervised positions of log p(target), per sequence.

    logits: (B, L, V); targets: (B, L) int; mask: (B, L) bool (the supervised set M).
    Returns (mean (B,) float32, count (B,) int): the mean is 0 where M is empty, and
    the count says which rows to leave out of a sequence-level loss.
    """
    logp = gather_logprobs(logits, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    return _masked_mean(logp, mask)


def ddo_loss(
    student_logp_real: Tensor,
    ref_logp_real: Tensor,
    student_logp_fake: Tensor,
    ref_logp_fake: Tensor,
    valid: Tensor,
    alpha: float = 0.5,
    beta: float = 0.1,
    normalizer: Count | None = None,
) -> tuple[Tensor, Metrics]:
    """Direct Discriminative Optimization with the student as implicit discriminator.

    All log-probability arguments are (B,) sequence-level ℓ (`masked_mean_logprob`);
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


@torch.no_grad()
def fake_tokens(
    ref_logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The reference's one-shot answer y_fake: its proposal on the masked positions.

    ref_logits: (B, L, V); targets: (B, L) int (x0); mask: (B, L) bool. Returns (B, L)
    int64 equal to `targets` outside `mask` (those positions are not in M, so they
    never enter ℓ) and, inside, the argmax (temperature 0) or one sample of
    softmax(logits / temperature) per position. `generator` must live on the logits'
    device; only masked positions draw, in row-major order.
    """
    targets = targets.long()
    if temperature == 0.0:
        proposal = ref_logits.argmax(dim=-1)  # (B, L)
        return torch.where(mask, proposal, targets)
    probs = torch.softmax(ref_logits[mask].float() / temperature, dim=-1)  # (M, V)
    fake = targets.clone()
    fake[mask] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return fake


def _masked_ce(logp: Tensor, mask: Tensor, normalizer: Count | None) -> tuple[Tensor, Tensor]:
    """Sum of -logp (B, L) over mask / count -> (loss, count)."""
    count = mask.sum()
    return _divide(torch.where(mask, -logp, 0).sum(), count, normalizer), count


def path_loss(
    logits: Tensor, x0: Tensor, supervise_mask: Tensor, normalizer: Count | None = None
) -> tuple[Tensor, Metrics]:
    """Path loss: cross-entropy of p_θ(· | x_s) against x0 on the path window.

    logits: (B, L, V); x0: (B, L) int; supervise_mask: (B, L) bool, the positions the
    teacher reveals within the next K steps (`states.path_mask`), so one student step
    is taught to do what K teacher steps did. Token-level: summed over those positions
    and divided by `normalizer` (default: their number).
    """
    logp = gather_logprobs(logits, x0.unsqueeze(-1)).squeeze(-1)  # (B, L)
    loss, count = _masked_ce(logp, supervise_mask, normalizer)
    return loss, {"path": loss.detach(), "path_tokens": count}


def ce_loss(logits: Tensor, x0: Tensor, mask: Tensor, normalizer: Count | None = None) -> tuple[Tensor, Metrics]:
    """Naive trajectory distillation: cross-entropy against x0 on every supervised position.

    logits: (B, L, V); x0: (B, L) int; mask: (B, L) bool, all supervised (masked or
    randomised) positions of the state. Token-level, like `path_loss` (which is this
    loss restricted to the path window).
    """
    logp = gather_logprobs(logits, x0.unsqueeze(-1)).squeeze(-1)  # (B, L)
    loss, count = _masked_ce(logp, mask, normalizer)
    return loss, {"ce": loss.detach(), "ce_tokens": count}


def fkl_loss(
    logits: Tensor,
    topk_logprobs: Tensor,
    topk_ids: Tensor,
    mask: Tensor,
    normalizer: Count | None = None,
) -> tuple[Tensor, Metrics]:
    """Forward KL(q_teacher || p_θ) from the teacher's stored top-k, per position.

    logits: (B, L, V) student; topk_logprobs: (B, L, k) the teacher's log-probs at the
    reveal step of each position (float16 on disk is fine); topk_ids: (B, L, k) their
    ids; mask: (B, L) bool. See `fkl_from_logprobs`.
    """
    ids = torch.where(mask.unsqueeze(-1), topk_ids.long(), 0)  # (B, L, k)
    return fkl_from_logprobs(gather_logprobs(logits, ids), topk_logprobs, mask, normalizer)


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


def t3d_objective(
    student_logits: Tensor,
    ref_logits: Tensor,
    targets: Tensor,
    supervised: Tensor,
    path: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.1,
    lambda_path: float = 0.2,
    fake_temperature: float = 0.0,
    generator: torch.Generator | None = None,
    seq_normalizer: Count | None = None,
    path_normalizer: Count | None = None,
    path_weight: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """T3D: L = L_DDO + λ_path · L_path, from one student and one reference forward.

    student_logits, ref_logits: (B, L, V), both on the same state x_s (the reference
    under no_grad); targets: (B, L) x0; supervised: (B, L) bool, M; path: (B, L) bool,
    the path window. Real y = x0, fake y = the reference's proposal on M
    (`fake_tokens`). See `t3d_from_logprobs`, which this computes after gathering the
    log-probs of the real and fake answers.
    """
    fake = fake_tokens(ref_logits, targets, supervised, fake_temperature, generator)  # (B, L)
    ids = torch.stack([targets.long(), fake], dim=-1)  # (B, L, 2): real, fake
    student = gather_logprobs(student_logits, ids)  # (B, L, 2)
    with torch.no_grad():
        ref = gather_logprobs(ref_logits, ids)  # (B, L, 2)
    return t3d_from_logprobs(
        student, ref, fake, targets, supervised, path, alpha=alpha, beta=beta, lambda_path=lambda_path,
        seq_normalizer=seq_normalizer, path_normalizer=path_normalizer, path_weight=path_weight,
    )  # fmt: skip


def t3d_from_logprobs(
    student: Tensor,
    ref: Tensor,
    fake: Tensor,
    targets: Tensor,
    supervised: Tensor,
    path: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.1,
    lambda_path: float = 0.2,
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
    Defaults α=0.5, β=0.1, λ_path=0.2 are the reference code's. λ_path=0 is DDO alone
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
        path_ce, path_count = _masked_ce(student[..., 0], path, path_normalizer)
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


# ---- registry: one objective per name, all called the same way by the training loop ----


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """Which objective to train and its weights."""

    kind: str = "t3d"
    """One of `OBJECTIVES`: "t3d" (DDO + λ_path·path), "ddo" (DDO alone), "ce" (naive
    trajectory distillation), "fkl" (forward KL to the stored teacher top-k)."""
    alpha: float = 0.5
    """Weight of the fake term of DDO."""
    beta: float = 0.1
    """Scale of the log-ratio inside the implicit discriminator; sweep 0.1-1."""
    lambda_path: float = 0.2
    """Weight of the path loss in "t3d"."""
    fake_temperature: float = 0.0
    """0: the fake is the reference's argmax; > 0: a sample at this temperature."""

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; choose from {sorted(OBJECTIVES)}")
        if self.alpha < 0 or self.beta <= 0 or self.lambda_path < 0 or self.fake_temperature < 0:
            raise ValueError("need alpha >= 0, beta > 0, lambda_path >= 0, fake_temperature >= 0")


@dataclass(frozen=True, kw_only=True)
class LossBatch:
    """What one micro-batch gives the objective; response positions only.

    Either the full logits (`logits`, `ref_logits`: small models, tests) or the log-probs
    of just the ids the objective reads (`logp`, `ref_logp`, `fake`: what the training
    loop computes in chunks, `logprobs.ResponseLogProbs`, with `Objective.ids` choosing the ids).
    """

    targets: Tensor
    """(B, L) int, x0 (EOS on padding, see `states.response_targets`)."""
    supervised: Tensor
    """(B, L) bool, M: masked or randomised positions."""
    path: Tensor | None = None
    """(B, L) bool, the path window ("t3d", "ddo")."""
    path_weight: Tensor | None = None
    """(B, L) float, per-position weights of the path loss (the `paper` levels); None: token mean."""
    padding: Tensor | None = None
    """(B, L) bool, padding after EOS: no stored top-k there ("fkl")."""
    topk_logprobs: Tensor | None = None
    """(B, L, k) teacher log-probs at reveal ("fkl")."""
    topk_ids: Tensor | None = None
    """(B, L, k) their ids ("fkl")."""
    logits: Tensor | None = None
    """(B, L, V) student logits on the state (with grad)."""
    ref_logits: Tensor | None = None
    """(B, L, V) reference logits on the same state, no grad ("t3d", "ddo")."""
    logp: Tensor | None = None
    """(B, L, k) student log-probs (with grad) of `Objective.ids`: [..., 0] x0, [..., 1] the fake
    ("t3d", "ddo"), or the teacher's k ids ("fkl"); 0 off the selected positions."""
    ref_logp: Tensor | None = None
    """(B, L, 2) reference log-probs of [x0, fake] ("t3d", "ddo")."""
    fake: Tensor | None = None
    """(B, L) int64 the reference's one-shot answer, x0 outside M ("t3d", "ddo")."""


def _topk_mask(supervised: Tensor, padding: Tensor | None) -> Tensor:
    return supervised if padding is None else supervised & ~padding


def normalizer_counts(
    supervised: Tensor, path: Tensor | None = None, padding: Tensor | None = None
) -> dict[str, Tensor]:
    """The counts each objective divides by, for one micro-batch (masks (B, L) bool).

    Under gradient accumulation, sum these over the micro-batches of an optimiser step
    (and all-reduce over workers), then pass the totals to `combine`: the step's loss
    is then exactly the full-batch loss. Known before the forward pass. "path_sequences"
    is the weighted path loss's count (rows with a path position).
    """
    counts = {"sequences": supervised.any(dim=-1).sum(), "supervised": supervised.sum()}
    zero = supervised.new_zeros((), dtype=torch.long)
    counts["path"] = path.sum() if path is not None else zero
    counts["path_sequences"] = path.any(dim=-1).sum() if path is not None else zero
    counts["topk"] = _topk_mask(supervised, padding).sum()
    return counts


def _require(value: Tensor | None, name: str, kind: str) -> Tensor:
    if value is None:
        raise ValueError(f'objective "{kind}" needs LossBatch.{name}')
    return value


def _t3d(batch: LossBatch, cfg: ObjectiveConfig, norm: dict, lambda_path: float | None = None) -> tuple[Tensor, Metrics]:
    """T3D; lambda_path=0.0 gives DDO alone."""
    lambda_path = cfg.lambda_path if lambda_path is None else lambda_path
    path = batch.path if batch.path is not None else torch.zeros_like(batch.supervised)
    weighted = batch.path_weight is not None
    return t3d_from_logprobs(
        _require(batch.logp, "logp", cfg.kind), _require(batch.ref_logp, "ref_logits", cfg.kind),
        _require(batch.fake, "fake", cfg.kind), batch.targets, batch.supervised, path,
        alpha=cfg.alpha, beta=cfg.beta, lambda_path=lambda_path, seq_normalizer=norm.get("sequences"),
        path_normalizer=norm.get("path_sequences" if weighted else "path"), path_weight=batch.path_weight,
    )  # fmt: skip


def _ce(batch: LossBatch, cfg: ObjectiveConfig, norm: dict) -> tuple[Tensor, Metrics]:
    logp = _require(batch.logp, "logp", cfg.kind)[..., 0]
    loss, count = _masked_ce(logp, batch.supervised, norm.get("supervised"))
    return loss, {"ce": loss.detach(), "ce_tokens": count, "loss": loss.detach()}


def _fkl(batch: LossBatch, cfg: ObjectiveConfig, norm: dict) -> tuple[Tensor, Metrics]:
    lp = _require(batch.topk_logprobs, "topk_logprobs", cfg.kind)
    mask = _topk_mask(batch.supervised, batch.padding)
    loss, metrics = fkl_from_logprobs(_require(batch.logp, "logp", cfg.kind), lp, mask, norm.get("topk"))
    return loss, metrics | {"loss": loss.detach()}


@dataclass(frozen=True)
class Objective:
    """A registered objective and what it needs: the reference (DDO's p_ref and fake), the
    stored teacher top-k; `ids` says which token ids' log-probs it reads per position."""

    loss: Callable[[LossBatch, ObjectiveConfig, dict], tuple[Tensor, Metrics]]
    needs_reference: bool = False
    needs_topk: bool = False

    def ids(self, targets: Tensor, fake: Tensor | None = None, topk_ids: Tensor | None = None) -> Tensor:
        """(..., k) int64 ids whose student log-probs the loss reads: [x0, fake], the top-k, or [x0]."""
        if self.needs_topk:
            return _require(topk_ids, "topk_ids", "fkl").long()
        if self.needs_reference:
            return torch.stack([targets.long(), _require(fake, "fake", "t3d")], dim=-1)
        return targets.long().unsqueeze(-1)

    def positions(self, supervised: Tensor, path: Tensor | None, padding: Tensor | None) -> Tensor:
        """(B, L) bool: where the loss reads a log-prob (M, the path window; no top-k on padding)."""
        if self.needs_topk:
            return _topk_mask(supervised, padding)
        return supervised | path if (self.needs_reference and path is not None) else supervised


OBJECTIVES: dict[str, Objective] = {
    "t3d": Objective(_t3d, needs_reference=True),
    "ddo": Objective(partial(_t3d, lambda_path=0.0), needs_reference=True),
    "ce": Objective(_ce),
    "fkl": Objective(_fkl, needs_topk=True),
}


def _gathered(batch: LossBatch, objective: Objective, cfg: ObjectiveConfig, generator) -> LossBatch:
    """A full-logits batch -> the log-probs the objective reads (fake first, from the reference)."""
    fake = ref_logp = None
    if objective.needs_reference:
        ref_logits = _require(batch.ref_logits, "ref_logits", cfg.kind)
        fake = fake_tokens(ref_logits, batch.targets, batch.supervised, cfg.fake_temperature, generator)
    ids = objective.ids(batch.targets, fake, batch.topk_ids)
    if objective.needs_topk:
        ids = torch.where(objective.positions(batch.supervised, None, batch.padding).unsqueeze(-1), ids, 0)
    if fake is not None:
        with torch.no_grad():
            ref_logp = gather_logprobs(batch.ref_logits, ids)  # (B, L, 2)
    logp = gather_logprobs(_require(batch.logits, "logits", cfg.kind), ids)
    return dataclasses.replace(batch, logp=logp, ref_logp=ref_logp, fake=fake)


def combine(
    batch: LossBatch,
    cfg: ObjectiveConfig,
    normalizers: dict[str, Count] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Metrics]:
    """The objective `cfg.kind` on one micro-batch; every metric dict has "loss".

    `normalizers`: totals of `normalizer_counts` over the optimiser step (None: this
    micro-batch's own counts). `generator`: for a sampled fake (fake_temperature > 0) when
    the batch carries full logits.
    """
    objective = OBJECTIVES[cfg.kind]
    if batch.logp is None:
        batch = _gathered(batch, objective, cfg, generator)
    return objective.loss(batch, cfg, normalizers or {})
