"""`--loss ddo`: Direct Discriminative Optimization alone (T3D with λ_path = 0; the path term is still reported).

Also the machinery of every DDO objective: the reference's one-shot (fake) answer on M,
the log-probs of the real and fake answers under student and reference, and the
log-prob metrics (ℓ of real and fake under both).
"""

from __future__ import annotations

import torch
from torch import Tensor

from t3d.trainer.losses import t3d_from_logprobs
from t3d.trainer.objectives.base import (
    Metric, Metrics, Micro, Objective, ObjectiveConfig, register, response_inputs, scatter,
)  # fmt: skip
from t3d.trainer.states import StateConfig, TrainingStates

SEQUENCE_MEANS = ("real_log_ratio", "fake_log_ratio", "ddo_real", "ddo_fake", "ddo_accuracy")
"""DDO's metrics that are means over the sequences with a non-empty M."""


@register
class DDO(Objective):
    """DDO with the student as implicit discriminator against the frozen reference."""

    name = "ddo"
    needs_reference = True
    parts = ("loss", "ddo", "path")

    def lambda_path(self, micro: Micro) -> float:
        """Weight of the path loss: none for DDO alone."""
        return 0.0

    def describe(self, cfg: ObjectiveConfig, states: StateConfig) -> str:
        return f"alpha {cfg.alpha}, beta {cfg.beta}"

    def loss(self, micro: Micro) -> tuple[Tensor, Metrics]:
        states, cfg, norms = micro.states, micro.cfg, micro.norms
        logp, ref_logp, fake = self.forward(micro)
        weighted = states.path_weight is not None
        loss, parts = t3d_from_logprobs(
            logp, ref_logp, fake, states.targets, states.supervised, states.path, alpha=cfg.alpha, beta=cfg.beta,
            lambda_path=self.lambda_path(micro), seq_normalizer=norms.get("sequences"),
            path_normalizer=norms.get("path_sequences" if weighted else "path"), path_weight=states.path_weight,
        )  # fmt: skip
        return loss, self.metrics(parts, ref_logp, states)

    def forward(self, micro: Micro) -> tuple[Tensor, Tensor, Tensor]:
        """Reference then student on the positions of M and the path window.

        Returns the student's log-probs (B, L, 2) of [x0, fake] with grad, the reference's
        (B, L, 2), and the fake (B, L): the reference's answer on M, x0 elsewhere.
        """
        states = micro.states
        select = states.supervised | states.path  # (B, L)
        inputs = response_inputs(states, select)
        targets = states.targets[select]  # (N,)
        sampled = micro.cfg.fake_temperature != 0.0
        with micro.autocast():
            with torch.no_grad():
                prop = micro.reference(*inputs, targets=targets, temperature=micro.cfg.fake_temperature,
                                       generator=micro.generator() if sampled else None)  # fmt: skip
            if hasattr(micro.reference, "reshard"):  # FSDP keeps a root unsharded after forward; no backward here
                micro.reference.reshard()
            in_m = states.supervised[select]  # (N,) the fake is the reference's answer on M only
            fake_sel = torch.where(in_m, prop.fake, targets)
            ref_logp = scatter(torch.stack([prop.logp_target, torch.where(in_m, prop.logp_fake, prop.logp_target)], -1), select)
            fake = torch.where(select, scatter(fake_sel, select), states.targets)  # (B, L)
            ids = torch.stack([targets.long(), fake_sel], dim=-1)  # (N, 2): real, fake
            logp = scatter(micro.student(*inputs, ids=ids), select)  # (B, L, 2)
        return logp, ref_logp, fake

    def metrics(self, parts: dict, ref_logp: Tensor, states: TrainingStates) -> Metrics:
        """The loss parts add up; ratios, terms and ℓ are means over sequences, fake_match over M."""
        sequences = states.supervised.any(dim=-1).sum()
        out = {name: Metric.total(parts[name]) for name in ("loss", "ddo", "path", "path_tokens")}
        out |= {name: Metric.mean(parts[name], sequences) for name in SEQUENCE_MEANS}
        out["fake_match"] = Metric.mean(parts["fake_match"], states.supervised.sum())
        logp = logp_metrics(ref_logp, states, parts)
        return out | {name: Metric.mean(value, sequences) for name, value in logp.items()}


@torch.no_grad()
def logp_metrics(ref_logp: Tensor, states: TrainingStates, parts: dict) -> dict[str, Tensor]:
    """ℓ (mean log-prob over M per sequence, averaged over sequences) of real and fake answers.

    ref_logp: (B, L, 2) the reference's log-probs of [x0, fake]. The objective already
    reports the per-sequence log-ratios ℓ_θ - ℓ_ref averaged over the same sequences, so
    ℓ_θ = ℓ_ref + ratio exactly.
    """
    supervised = states.supervised  # (B, L)
    count = supervised.sum(dim=-1)  # (B,)
    per_row = (ref_logp * supervised[..., None]).sum(dim=1) / count.clamp(min=1)[:, None]  # (B, 2)
    valid = (count > 0).to(per_row.dtype)  # (B,)
    mean = (per_row * valid[:, None]).sum(dim=0) / valid.sum().clamp(min=1)  # (2,)
    return {
        "logp_real_ref": mean[0], "logp_fake_ref": mean[1],
        "logp_real_student": mean[0] + parts["real_log_ratio"], "logp_fake_student": mean[1] + parts["fake_log_ratio"],
    }  # fmt: skip
