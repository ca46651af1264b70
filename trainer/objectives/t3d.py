"""`--loss t3d` (the default): L = L_DDO + λ_path · L_path (DESIGN.md section 5)."""

from __future__ import annotations

from t3d.trainer.objectives.base import Micro, ObjectiveConfig, register
from t3d.trainer.objectives.ddo import DDO
from t3d.trainer.states import StateConfig


@register
class T3D(DDO):
    """DDO against the reference plus the path loss on the window of the next K teacher steps."""

    name = "t3d"

    def lambda_path(self, micro: Micro) -> float:
        return micro.cfg.lambda_path

    def describe(self, cfg: ObjectiveConfig, states: StateConfig) -> str:
        return f"alpha {cfg.alpha}, beta {cfg.beta}, lambda_path {cfg.lambda_path}, path_k {states.path_k_steps}"
