"""`--loss fkl`: forward KL to the teacher's stored top-k at each position's reveal step."""

from __future__ import annotations

import torch
from torch import Tensor

from t3d.trainer.losses import fkl_from_logprobs
from t3d.trainer.objectives.base import Metric, Metrics, Micro, Objective, register, response_inputs, scatter
from t3d.trainer.states import TrainingStates, response_to_sections


@register
class FKL(Objective):
    """Token-level KL(q_teacher || p_θ) over M without padding (no stored top-k there)."""

    name = "fkl"
    arrays = ("topk_logprobs", "topk_ids")
    parts = ("loss", "fkl")

    def loss(self, micro: Micro) -> tuple[Tensor, Metrics]:
        states = micro.states
        device = states.targets.device
        topk_ids = in_sections(micro.batch.topk_ids, states, device)  # (B, L, k)
        if topk_ids is None:
            raise ValueError('objective "fkl" needs the stored top-k (topk_ids)')
        select = states.supervised & ~states.padding  # (B, L)
        with micro.autocast():
            logp = scatter(micro.student(*response_inputs(states, select), ids=topk_ids[select].long()), select)
        topk_logprobs = in_sections(micro.batch.topk_logprobs, states, device)  # (B, L, k)
        loss, metrics = fkl_from_logprobs(logp, topk_logprobs, select, micro.norms.get("topk"))
        return loss, {"fkl": Metric.total(loss), "fkl_tokens": Metric.total(metrics["fkl_tokens"]),
                      "loss": Metric.total(loss)}  # fmt: skip


def in_sections(tensor: Tensor | None, states: TrainingStates, device: torch.device) -> Tensor | None:
    """A per-response-position tensor (the stored top-k) in the states' column coordinates."""
    if tensor is None:
        return None
    tensor = tensor.to(device, non_blocking=True)
    extra = states.targets.shape[1] - tensor.shape[1]  # StateConfig.pad_columns
    if extra:
        tensor = torch.nn.functional.pad(tensor, (0, 0, 0, extra))
    return response_to_sections(tensor, states.shift) if bool(states.shift.any()) else tensor
