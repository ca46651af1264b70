"""Training objectives, one file each, registered by their `--loss` name (see `base`)."""

from t3d.trainer.objectives.base import (
    OBJECTIVES, Metric, Metrics, Micro, Objective, ObjectiveConfig, get_objective, loss_parts, register,
    response_inputs, scatter,
)  # fmt: skip
from t3d.trainer.objectives import cap, ce, certainty, d3llm, ddo, fkl, t3d  # noqa: F401  (registers them)

__all__ = [
    "OBJECTIVES", "Metric", "Metrics", "Micro", "Objective", "ObjectiveConfig", "get_objective", "loss_parts",
    "register", "response_inputs", "scatter",
]  # fmt: skip
