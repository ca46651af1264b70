"""The model-family registry: one object per family, picked by name or by a checkpoint's model_type.

Adding a family is one file in this package that defines a `Family` and one line in
`_ALL` below, or `register_family(family)` from outside the package (a plug-in, a test);
nothing outside the registry compares family names: every difference between families
is a field or a method of `Family` (attention pattern, training layout, alignment,
checkpoint layout).
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


def register_family(family: Family) -> Family:
    """Add `family` to the registry (by its name and its model types), so checkpoints and --family can name it.

    A name or model type already registered to another family is refused: families are looked up by name
    everywhere, so two under one name would make the choice depend on import order.
    """
    taken = [family.name] if FAMILIES.get(family.name.lower(), family) is not family else []
    taken += [t for t in family.model_types if MODEL_TYPES.get(t.lower(), family) is not family]
    if taken:
        raise ValueError(f"family {family.name!r}: {', '.join(taken)} already registered to another family")
    FAMILIES[family.name.lower()] = family
    MODEL_TYPES.update({t.lower(): family for t in family.model_types})
    return family


def unregister_family(family: Family) -> None:
    """Remove a family added with `register_family` (tests restore the registry)."""
    FAMILIES.pop(family.name.lower(), None)
    for t in family.model_types:
        MODEL_TYPES.pop(t.lower(), None)


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
    return sorted({t for t, f in MODEL_TYPES.items() if f.unsupported is None})


__all__ = [
    "Architecture", "FAMILIES", "Family", "IDENTITY", "MODEL_TYPES", "family_for_model_type", "get_family",
    "known_model_types", "register_family", "unregister_family",
]
