"""`--loss certainty`: dParallel's certainty-forcing distillation (Chen et al., ICLR 2026).

Per training state x (the teacher's trajectory state; dParallel draws its own, see
docs/OBJECTIVES.md) and, with `--complement` (its code always does), the complementary
state x' of the same blocks, the student p_θ is trained with cross-entropy against x0 on
the masked positions M and with the entropy of softmax(logits / T) on the masked positions
it already predicts right, C = {i in M : argmax p_θ(· | x)_i = x0_i}:

    row r:  CE_r(x) + w · H_r(x)  [+ CE_r(x') + w · H_r(x')]
    CE_r = mean over M_r of -log p_θ(x0_i | x);  H_r = mean over C_r of H(softmax(log p_θ(· | x)_i / T))
    L = Σ_r row_r / R         (R: the rows of the optimizer step, every micro-batch and worker)

dParallel trains one sequence per device and averages over accumulation and devices, so
a mean over rows of per-row means is its loss exactly; it is known before any forward,
so accumulation and workers stay exact. What it needs from the dataset: x0 (and the
reveal order the states are cut with), which every t3d dataset holds.

Also the machinery of "cap" and "d3llm": the full-vocabulary log-probs of a view's masked
positions, the complementary view (one forward for both views, so DDP sees one pass), and
the per-row terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from t3d.trainer.objectives.base import Metric, Metrics, Micro, Objective, ObjectiveConfig, register, scatter
from t3d.trainer.states import StateConfig, TrainingStates

ENTROPY_EPS = 1e-12
"""dParallel's and d3LLM's -Σ p log(p + eps) (LLaDA/llada_train.py:213)."""


class ViewTerms(NamedTuple):
    """Per-position terms of one view, (B, L) each, zero off its masked positions."""

    masked: Tensor  # (B, L) bool, the view's masked (supervised) positions
    ce: Tensor  # (B, L) float32, -log p_θ(x0_i | view)
    entropy: Tensor  # (B, L) float32, H of softmax(log p / T) at i
    correct: Tensor  # (B, L) bool, masked and argmax p_θ = x0


def _inner(student: torch.nn.Module) -> torch.nn.Module:
    """The log-probs module under a DDP wrapper (FSDP2 shards in place)."""
    return getattr(student, "module", student)


def trained_columns(states: TrainingStates) -> Tensor:
    """(B, L) bool: the response columns of the blocks this state trains (semi-AR: the current block; else all)."""
    cols = torch.ones_like(states.supervised)
    if states.current_block is not None:
        size = cols.shape[1] // states.state_step.shape[1]  # B
        block = torch.arange(cols.shape[1], device=cols.device) // size  # (L,)
        cols = block[None, :] == states.current_block[:, None]  # (B, L)
    return cols & ~states.padding & ~states.tail


def complement(states: TrainingStates, mask_id: int) -> tuple[Tensor, Tensor]:
    """The complementary view: in the trained blocks the masked positions show x0 and the shown ones are masked.

    Returns (input_ids (B, T) with the noisy copy (the last L columns) swapped, M' (B, L)).
    Padding after EOS stays as the state shows it (t3d never supervises it by default).
    """
    masked = trained_columns(states) & ~states.supervised  # (B, L) M'
    length = states.targets.shape[1]
    noisy = states.input_ids[:, -length:]  # (B, L)
    swapped = torch.where(masked, mask_id, torch.where(states.supervised, states.targets, noisy))
    return torch.cat([states.input_ids[:, :-length], swapped.to(states.input_ids.dtype)], dim=1), masked


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None else torch.cat([a, b], dim=0)


def entropy(logp: Tensor, temperature: float, eps: float) -> Tensor:
    """(N, V) log-probs -> (N,) entropy of softmax(logp / T): -Σ p log(p + eps) (eps 0: -Σ p log p, 0 log 0 = 0)."""
    if eps == 0.0:
        logq = torch.log_softmax(logp / temperature, dim=-1)  # -inf where p underflows: clamped, so 0 · log 0 = 0
        return -(logq.exp() * logq.clamp(min=torch.finfo(logq.dtype).min)).sum(-1)
    q = torch.softmax(logp / temperature, dim=-1)  # (N, V)
    return -(q * torch.log(q + eps)).sum(-1)


def view_terms(micro: Micro, temperature: float, eps: float, both: bool) -> list[ViewTerms]:
    """One student forward over the state's masked positions (and, with `both`, its complement's, as more rows)."""
    states = micro.states
    inputs, select = (states.input_ids, states.attention_bias, states.position_ids), states.supervised  # (B, L)
    if both:
        ids2, select2 = complement(states, _inner(micro.student).model.mask_id)
        inputs = (torch.cat([states.input_ids, ids2]), _cat(states.attention_bias, states.attention_bias),
                  _cat(states.position_ids, states.position_ids))  # fmt: skip
        select = torch.cat([select, select2])  # (2B, L)
    x0 = torch.cat([states.targets] * (2 if both else 1))[select]  # (N,)
    with micro.autocast():
        logp = micro.student(*inputs, states.targets.shape[1], select)  # (N, V) every id
    ce = scatter(-logp.gather(-1, x0[:, None].long())[:, 0], select)  # (B or 2B, L)
    ent = scatter(entropy(logp, temperature, eps), select)
    correct = scatter(logp.argmax(-1) == x0, select)
    terms = [t.split(states.targets.shape[0]) for t in (select, ce, ent, correct)]
    return [ViewTerms(*view) for view in zip(*terms)]


def row_mean(values: Tensor, where: Tensor) -> Tensor:
    """(B, L), (B, L) bool -> (B,) mean over `where` per row, 0 where empty."""
    return torch.where(where, values, 0).sum(-1) / where.sum(-1).clamp(min=1)


def correct_share(views: list[ViewTerms]) -> Metric:
    """The share of masked positions the student already predicts right (argmax = x0), over every view."""
    masked = sum(v.masked.sum() for v in views)
    return Metric.mean(sum(v.correct.sum() for v in views) / masked.clamp(min=1), masked)


@register
class Certainty(Objective):
    """CE + w · entropy on correctly predicted masked tokens, per row, on the state and its complement."""

    name = "certainty"
    parts = ("loss", "ce", "entropy")
    complement_entropy = True
    """dParallel adds the complement's entropy term too (d3LLM does not)."""
    scale = 1.0
    """The whole loss is multiplied by this (d3LLM divides by 4)."""

    def counts(self, states: TrainingStates) -> dict[str, Tensor]:
        return {"rows": torch.tensor(states.targets.shape[0], device=states.targets.device)}

    def describe(self, cfg: ObjectiveConfig, states: StateConfig) -> str:
        return (f"entropy_weight {cfg.entropy_weight}, entropy_temperature {cfg.entropy_temperature}, "
                f"complement {'on' if cfg.complement else 'off'}")  # fmt: skip

    def loss(self, micro: Micro) -> tuple[Tensor, Metrics]:
        cfg, rows = micro.cfg, micro.norms["rows"].clamp(min=1)
        views = view_terms(micro, cfg.entropy_temperature, ENTROPY_EPS, cfg.complement)
        ce = sum(row_mean(v.ce, v.masked) for v in views)  # (B,)
        with_entropy = views if self.complement_entropy else views[:1]
        ent = sum(row_mean(v.entropy, v.correct) for v in with_entropy)  # (B,)
        ce_part, ent_part = self.scale * ce.sum() / rows, self.scale * ent.sum() / rows
        loss = ce_part + cfg.entropy_weight * ent_part
        return loss, {
            "loss": Metric.total(loss), "ce": Metric.total(ce_part), "entropy": Metric.total(ent_part),
            "correct_share": correct_share(views),
        }  # fmt: skip
