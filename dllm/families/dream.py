"""Dream (Dream-v0-Instruct-7B): a Qwen2 network with bidirectional attention and logits shifted by one.

The weights carry Qwen2's names and load into `Qwen2ForCausalLM`; on the same weights in
fp32 it gives Dream's logits exactly under a bidirectional mask. Dream keeps the AR
habit of predicting token i from row i - 1, so the logits are unshifted once.
"""

from typing import Any

from t3d.dllm.families.base import Architecture, Family, qwen_example_config


def _example_config(**sizes) -> dict[str, Any]:
    """Dream-v0-Instruct's config.json layout (Qwen2 fields, its own architecture)."""
    return qwen_example_config(**sizes) | {"architectures": ["DreamModel"], "model_type": "Dream"}


DREAM = Family(
    name="dream",
    description="Dream: Qwen2 with bidirectional attention, logits shifted by one",
    shifted=True,
    model_types=("dream",),
    architecture=Architecture(config_class="Qwen2Config", model_class="Qwen2ForCausalLM"),
    mask_id=151666,
    example_config=_example_config,
)
