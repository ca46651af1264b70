"""SDAR (JetAstra; SDAR-1.7B/4B/8B-Chat, what T3D distils): a Qwen3 network with block-causal attention.

Its weights carry Qwen3's own names, so they load into `Qwen3ForCausalLM`; its modelling
code reads a 0/1 keep-mask and runs its own loss in train mode, so it is never called.
On the same weights in fp32, Qwen3 with a block-causal additive mask gives SDAR's logits
exactly. Blocks are aligned to absolute positions from the first prompt token (its own
`block_diffusion_generate` prefills whole prompt blocks and decodes the prompt's tail
together with the first masks).
"""

from __future__ import annotations

from typing import Any

from t3d.dllm.families.base import Architecture, Family, qwen_example_config

# config.json keys of SDAR's own code that mean nothing to Qwen3 (or would switch its attention kernel).
_SDAR_ONLY = (
    "attn_implementation", "fuse_cross_entropy", "debug", "ep_size", "micro_forward", "skip_checkpoint", "use_deepep",
)


class _SDARArchitecture(Architecture):
    def config_fields(self, raw: dict[str, Any], path: Any) -> dict[str, Any]:
        fields = super().config_fields(raw, path)
        return {k: v for k, v in fields.items() if k not in _SDAR_ONLY}


def _example_config(**sizes) -> dict[str, Any]:
    """SDAR-Chat's config.json layout (Qwen3 fields, its own architecture and block size 4)."""
    return qwen_example_config(**sizes) | {
        "architectures": ["SDARForCausalLM"], "model_type": "sdar", "block_size": 4,
        "head_dim": sizes["hidden_size"] // sizes["num_heads"], "attention_bias": False,
    }


SDAR = Family(
    name="sdar",
    description="SDAR: Qwen3 with block-causal attention, blocks at absolute positions",
    block_causal=True,
    absolute_blocks=True,
    block_size_key="block_size",
    model_types=("sdar",),
    architecture=_SDARArchitecture(config_class="Qwen3Config", model_class="Qwen3ForCausalLM"),
    mask_id=151669,
    example_config=_example_config,
)

SDAR_MOE = Family(
    name="sdar_moe",
    description="SDAR mixture-of-experts (not supported yet)",
    block_causal=True,
    absolute_blocks=True,
    block_size_key="block_size",
    model_types=("sdar_moe",),
    architecture=None,
    mask_id=151669,
    unsupported="SDAR-MoE checkpoints are not supported yet: their expert weight layout has not been checked "
    "against Qwen3-MoE",
)
