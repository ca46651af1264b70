"""What names a model in a dataset manifest, a checkpoint and an eval report, built in one place.

A checkpoint read without its weights (`loading.CheckpointInfo`, what the collect driver
records) and a loaded model (`DiffusionLM`) both describe themselves through
`model_identity`, so the two cannot drift. Collected datasets store this dict as their
manifest's `teacher` (a resumed collect checks its fingerprint; the trainer its vocabulary,
mask id and family), so its keys, their order and the eos-first `stop_ids` stay as they are.
"""

from __future__ import annotations

from typing import Any, Protocol

from t3d.dllm.families import Family


class TokenIds(Protocol):
    """The fields of a model's vocabulary that its identity records (a `DiffusionLM` or a `CheckpointInfo`)."""

    family: Family
    vocab_size: int
    mask_id: int
    pad_id: int
    eos_id: int
    stop_ids: tuple[int, ...]


def model_identity(model: TokenIds, *, name: str, fingerprint: str, path: str) -> dict[str, Any]:
    """The identity dict: name, weights fingerprint, family, the special ids, where it was loaded from.

    stop_ids lists eos_id first, then the model's other stop ids, as `DiffusionLM.eos_ids` orders them.
    """
    return {
        "name": name,
        "fingerprint": fingerprint,
        "family": model.family.name,
        "vocab_size": model.vocab_size,
        "mask_id": model.mask_id,
        "pad_id": model.pad_id,
        "eos_id": model.eos_id,
        "stop_ids": [model.eos_id, *(i for i in model.stop_ids if i != model.eos_id)],
        "path": path,
    }
