"""The losses on full logits (B, L, V), for tests: the formulas checked by hand on small tensors.

The trainer never holds (B, L, V): its objectives read log-probs of chosen ids at chosen
positions (`t3d.trainer.logprobs.ResponseLogProbs`). These helpers gather the same
log-probs from full logits and call the same pure functions of `t3d.trainer.losses`;
`LogitsStudent` gives a registered objective full logits behind `ResponseLogProbs`'s
interface, so the objectives themselves run on hand-made tensors.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from t3d.trainer.logprobs import linear_proposal
from t3d.trainer.losses import ddo_loss, fkl_from_logprobs, masked_ce, t3d_from_logprobs  # noqa: F401
from t3d.trainer.objectives import OBJECTIVES, Micro, ObjectiveConfig

DEFAULTS = ObjectiveConfig()


def gather_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log p(id) under softmax(logits): logits (B, L, V), ids (B, L, k) -> (B, L, k) float32."""
    logits = logits.float()  # (B, L, V)
    return logits.gather(-1, ids.long()) - torch.logsumexp(logits, dim=-1, keepdim=True)


def masked_mean_logprob(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """ℓ(y | x_s) per sequence: (mean (B,), count (B,)) of log p(target) over mask (B, L); 0 where empty."""
    logp = gather_logprobs(logits, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    count = mask.sum(dim=-1)
    return torch.where(mask, logp, 0).sum(dim=-1) / count.clamp(min=1), count


@torch.no_grad()
def fake_tokens(ref_logits: Tensor, targets: Tensor, mask: Tensor, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """The reference's one-shot answer: argmax (or one sample at `temperature`) on mask, targets elsewhere."""
    targets = targets.long()
    if temperature == 0.0:
        return torch.where(mask, ref_logits.argmax(dim=-1), targets)
    probs = torch.softmax(ref_logits[mask].float() / temperature, dim=-1)  # (M, V)
    fake = targets.clone()
    fake[mask] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return fake


def path_loss(logits: Tensor, x0: Tensor, mask: Tensor, normalizer=None):
    loss, count = masked_ce(gather_logprobs(logits, x0.unsqueeze(-1))[..., 0], mask, normalizer)
    return loss, {"path": loss.detach(), "path_tokens": count}


def ce_loss(logits: Tensor, x0: Tensor, mask: Tensor, normalizer=None):
    loss, count = masked_ce(gather_logprobs(logits, x0.unsqueeze(-1))[..., 0], mask, normalizer)
    return loss, {"ce": loss.detach(), "ce_tokens": count}


def fkl_loss(logits: Tensor, topk_logprobs: Tensor, topk_ids: Tensor, mask: Tensor, normalizer=None):
    ids = torch.where(mask.unsqueeze(-1), topk_ids.long(), 0)  # (B, L, k)
    return fkl_from_logprobs(gather_logprobs(logits, ids), topk_logprobs, mask, normalizer)


def t3d_objective(student_logits: Tensor, ref_logits: Tensor, targets: Tensor, supervised: Tensor, path: Tensor, *,
                  alpha: float = DEFAULTS.alpha, beta: float = DEFAULTS.beta, lambda_path: float = DEFAULTS.lambda_path,
                  fake_temperature: float = 0.0, generator=None, **normalizers):  # fmt: skip
    """T3D from one student and one reference forward (full logits), the weights' defaults `ObjectiveConfig`'s."""
    fake = fake_tokens(ref_logits, targets, supervised, fake_temperature, generator)  # (B, L)
    ids = torch.stack([targets.long(), fake], dim=-1)  # (B, L, 2): real, fake
    with torch.no_grad():
        ref = gather_logprobs(ref_logits, ids)
    return t3d_from_logprobs(gather_logprobs(student_logits, ids), ref, fake, targets, supervised, path, alpha=alpha,
                             beta=beta, lambda_path=lambda_path, **normalizers)  # fmt: skip


class LogitsStudent(nn.Module):
    """`ResponseLogProbs`'s interface over full logits: `logits_of(input_ids)` -> (B, L, V).

    `model.mask_id`: what an objective that builds a second view of a state (the complement
    of `certainty`) writes into the response copy (the last L columns of input_ids)."""

    def __init__(self, logits_of, mask_id: int = 0) -> None:
        super().__init__()
        self.logits_of = logits_of
        self.model = SimpleNamespace(mask_id=mask_id)

    def forward(self, input_ids, attention_bias, position_ids, length, select, ids=None, targets=None,
                temperature=0.0, generator=None):  # fmt: skip
        rows = self.logits_of(input_ids)[select]  # (N, V)
        if targets is not None:
            return linear_proposal(rows, None, None, targets, temperature, generator)
        if ids is None:  # every id, as ResponseLogProbs
            return torch.log_softmax(rows.float(), dim=-1)  # (N, V)
        return gather_logprobs(rows[:, None], ids[:, None])[:, 0]  # (N, k), with grad even for N = 0


def states_of(targets: Tensor, supervised: Tensor, path: Tensor | None = None, padding: Tensor | None = None,
              path_weight: Tensor | None = None, input_ids: Tensor | None = None) -> SimpleNamespace:  # fmt: skip
    """The fields of `TrainingStates` an objective reads, response columns only (no shift, no prompt).

    input_ids: one key column (input_ids' first, else the targets'), then the response copy
    (the targets), so a `logits_of` keyed on column 0 survives a second view of the state."""
    zeros = torch.zeros_like(supervised)
    key = (targets if input_ids is None else input_ids)[:, :1]
    return SimpleNamespace(
        input_ids=torch.cat([key, targets], dim=1), attention_bias=None, position_ids=None, tail=zeros,
        current_block=None,
        targets=targets, supervised=supervised, path=zeros if path is None else path, path_weight=path_weight,
        padding=zeros if padding is None else padding, shift=torch.zeros(len(targets), dtype=torch.long),
    )  # fmt: skip


def run_objective(kind: str, states, student: nn.Module, reference: nn.Module | None = None, norms=None,
                  topk_ids: Tensor | None = None, topk_logprobs: Tensor | None = None, cfg: ObjectiveConfig | None = None):  # fmt: skip
    """The registered objective `kind` on one micro-batch -> (loss, metrics); norms None: its own counts."""
    objective = OBJECTIVES[kind]
    batch = SimpleNamespace(topk_ids=topk_ids, topk_logprobs=topk_logprobs)
    micro = Micro(states=states, batch=batch, norms=objective.counts(states) if norms is None else norms,
                  cfg=cfg or ObjectiveConfig(kind=kind), student=student, reference=reference)  # fmt: skip
    return objective.loss(micro)
