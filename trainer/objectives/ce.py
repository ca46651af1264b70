"""`--loss ce`: naive trajectory distillation, cross-entropy against x0 on every supervised position."""

from __future__ import annotations

from torch import Tensor

from t3d.trainer.losses import masked_ce
from t3d.trainer.objectives.base import Metric, Metrics, Micro, Objective, register, response_inputs, scatter


@register
class CE(Objective):
    """Token-level CE over M, divided by the step's supervised tokens."""

    name = "ce"
    parts = ("loss", "ce")

    def loss(self, micro: Micro) -> tuple[Tensor, Metrics]:
        states = micro.states
        select = states.supervised  # (B, L)
        ids = states.targets[select].long().unsqueeze(-1)  # (N, 1)
        with micro.autocast():
            logp = scatter(micro.student(*response_inputs(states, select), ids=ids), select)  # (B, L, 1)
        loss, count = masked_ce(logp[..., 0], states.supervised, micro.norms.get("supervised"))
        return loss, {"ce": Metric.total(loss), "ce_tokens": Metric.total(count), "loss": Metric.total(loss)}
