"""`--loss cap`: LLaDA 2.0's confidence-aware parallel (CAP) training, L = L_SFT + λ · L_conf.

Public definition: the LLaDA2.0-mini-CAP / -flash-CAP model cards (L_conf "minimizes
entropy only for correctly predicted tokens") and the LLaDA 2.0 team's training code,
inclusionAI/dFactory `tasks/train_llada2_bd_with_dparallel.py` (see docs/OBJECTIVES.md):
cross-entropy against x0 over the masked positions M plus `--entropy-weight` times the
mean entropy (softmax at temperature 1) over the masked positions whose argmax is x0.

    L = Σ_M -log p_θ(x0_i | x) / |M|  +  λ · Σ_r H_r / R
    H_r = mean over C_r = {i in M_r : argmax p_θ(· | x)_i = x0_i} of H(p_θ(· | x)_i)

|M| and R (rows with a non-empty M) are the optimizer step's, every micro-batch and worker
(dFactory divides by the micro-batch's |M| and |C| and averages micro-batches). |C| is
only known after the forward, so the entropy is a mean per row, then over rows: exact
under accumulation. Needs x0 only.
"""

from __future__ import annotations

from torch import Tensor

from t3d.trainer.objectives.base import Metric, Metrics, Micro, Objective, ObjectiveConfig, register
from t3d.trainer.objectives.certainty import correct_share, row_mean, view_terms
from t3d.trainer.states import StateConfig


@register
class CAP(Objective):
    """Token-mean CE over M + λ · per-row mean entropy (T = 1) on the correctly predicted masked tokens."""

    name = "cap"
    parts = ("loss", "ce", "entropy")

    def describe(self, cfg: ObjectiveConfig, states: StateConfig) -> str:
        return f"entropy_weight (lambda) {cfg.entropy_weight}, temperature 1"

    def loss(self, micro: Micro) -> tuple[Tensor, Metrics]:
        (view,) = view_terms(micro, temperature=1.0, eps=0.0, both=False)
        tokens, rows = micro.norms["supervised"].clamp(min=1), micro.norms["sequences"].clamp(min=1)
        ce = view.ce.sum() / tokens  # zero off M
        ent = row_mean(view.entropy, view.correct).sum() / rows
        loss = ce + micro.cfg.entropy_weight * ent
        return loss, {"loss": Metric.total(loss), "ce": Metric.total(ce), "entropy": Metric.total(ent),
                      "correct_share": correct_share([view])}  # fmt: skip

