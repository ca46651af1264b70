"""Training objectives, one file each, registered by their `--loss` name (see `base`).

Every module of this package is imported here, so a new objective is its file alone: no
list of names to keep in step (`@register` in the file does the rest).
"""

import importlib
import pkgutil

from t3d.trainer.objectives.base import (
    OBJECTIVES, Metric, Metrics, Micro, Objective, ObjectiveConfig, get_objective, loss_parts, register,
    response_inputs, scatter,
)  # fmt: skip

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")  # registers its objective

__all__ = [
    "OBJECTIVES", "Metric", "Metrics", "Micro", "Objective", "ObjectiveConfig", "get_objective", "loss_parts",
    "register", "response_inputs", "scatter",
]  # fmt: skip
