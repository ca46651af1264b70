"""The model-family registry: one object per family, picked by name or by a checkpoint's model_type.

Adding a family is one file in this package that defines a `Family` and one line in
`_ALL` below; nothing outside the registry compares family names.
"""

from __future__ import annotations

from t3d.dllm.errors import UserError
from t3d.dllm.families.base import IDENTITY, Architecture, Family
from t3d.dllm.families.dream import DREAM
from t3d.dllm.families.generic import BIDIRECTIONAL, BLOCK_CAUSAL, SHIFTED
from t3d.dllm.families.llada import LLADA, LLADA_MOE
from t3d.dllm.families.sdar import SDAR, SDAR_MOE

_ALL = (BIDIRECTIONAL, SHIFTED, BLOCK_CAUSAL, SDAR, SDAR_MOE, LLADA, LLADA_MOE, DREAM)

FAMILIES: dict[str, Family] = {f.name: f for f in _ALL}
MODEL_TYPES: dict[str, Family] = {t.lower(): f for f in _ALL for t in f.model_types}


def get_family(name: str | Family) -> Family:
    """The family registered under `name` (case-insensitive), or a one-line error listing the known ones."""
    if isinstance(name, Family):
        return name
    family = FAMILIES.get(str(name).lower())
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise UserError(f"unknown model family {name!r} (known: {known})")
    return family


def family_for_model_type(model_type: str) -> Family | None:
    """The family that loads checkpoints of `model_type` natively (matched case-insensitively), or None."""
    return MODEL_TYPES.get(str(model_type).lower())


def known_model_types() -> list[str]:
    return sorted({t for f in _ALL for t in f.model_types if f.unsupported is None})


__all__ = [
    "Architecture", "FAMILIES", "Family", "IDENTITY", "MODEL_TYPES", "family_for_model_type", "get_family",
    "known_model_types",
]
