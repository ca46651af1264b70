"""The teacher as the driver sees it (metadata, no weights) and as a worker loads it.

The driver never loads the weights: on a cluster its node may have no GPU and little
memory. It reads the config, the tokenizer and the weights' fingerprint, which is all
it needs to encode prompts, check lengths and name the teacher in the manifest. Each
worker then loads the full model and checks that its fingerprint is the driver's, so a
node that sees different files under the same path fails loudly instead of mixing
two teachers in one dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from t3d.dllm import loading
from t3d.dllm.errors import UserError
from t3d.pipeline.config import TeacherConfig


@dataclass(frozen=True)
class TeacherInfo:
    """What the driver knows about the teacher."""

    identity: dict[str, Any]  # as `DiffusionLM.identity()` gives it
    max_length: int  # prompt + response tokens the model accepts
    tokenizer: Any  # None when the checkpoint has none
    task_seed: int = 0  # seed of the built-in task the checkpoint was trained on (`t3d_task_seed`)

    @property
    def fingerprint(self) -> str:
        return self.identity["fingerprint"]


def describe_teacher(cfg: TeacherConfig) -> TeacherInfo:
    """Config, tokenizer and fingerprint of the teacher checkpoint, without its weights."""
    info = loading.describe_checkpoint(cfg.model, cfg.load.family, cfg.load.trust_remote_code)
    return TeacherInfo(
        identity=info.identity("builtin" if cfg.model == "builtin" else None),
        max_length=info.max_length,
        tokenizer=info.tokenizer,
        task_seed=int(info.raw_config.get("t3d_task_seed", 0) or 0),
    )


def load_teacher(cfg: TeacherConfig, expected_fingerprint: str | None = None, device: str | None = None):
    """Load the teacher on `device` (default: CUDA when this process sees a GPU, else CPU)."""
    import torch

    from t3d.dllm import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(
        cfg.model,
        family=cfg.load.family,
        trust_remote_code=cfg.load.trust_remote_code,
        device=device,
        dtype=cfg.load.dtype,
    )
    if expected_fingerprint is not None and model.fingerprint != expected_fingerprint:
        raise UserError(
            f"the teacher at {model.path} on this node has fingerprint {model.fingerprint}, "
            f"the driver saw {expected_fingerprint}: every node must see the same checkpoint"
        )
    return model
