"""Grouped-query attention over the KV heads, without transformers' `repeat_kv` copies.

Every family passes a 4D mask (`t3d.dllm.masks`), and transformers' SDPA path turns
grouped-query attention off whenever a mask is given (`use_gqa_in_sdpa`): keys and
values are then copied from the KV heads to every query head (`repeat_kv`, 8 -> 16 heads
at Qwen3-0.6B) on each layer of each forward. Where torch's kernel takes the mask and
`enable_gqa` together (its CPU kernel: the same numbers, bit for bit, forward and
backward), the attention here reads the KV heads as they are; elsewhere (CUDA, where a
mask with `enable_gqa` falls back to the math kernel) transformers' own SDPA path runs
unchanged. `use_grouped_sdpa` switches a network onto it; `DiffusionLM` does so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

NAME = "t3d_sdpa"
"""The attention implementation's name in transformers' registries (a network's `config._attn_implementation`)."""

GQA_WITH_MASK_DEVICES = frozenset({"cpu"})
"""Device types whose SDPA kernel runs a masked grouped-query attention without copying K/V (checked: bit-identical)."""


def grouped_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' `sdpa_attention_forward`, but a masked multi-row GQA call on a capable device uses `enable_gqa`.

    query (B, Hq, q, D), key / value (B, Hkv, W, D), attention_mask (B, 1, q, W) additive.
    One query row (q = 1) is left to transformers, which folds the groups itself.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    direct = (
        groups > 1 and attention_mask is not None and query.shape[2] > 1 and query.device.type in GQA_WITH_MASK_DEVICES
        and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    )  # fmt: skip
    if not direct:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
                                         enable_gqa=True)  # (B, Hq, q, D)  # fmt: skip
    return out.transpose(1, 2).contiguous(), None  # (B, q, Hq, D)


AttentionInterface.register(NAME, grouped_sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)  # masks built by transformers itself stay SDPA's


def use_grouped_sdpa(net: torch.nn.Module) -> None:
    """Run `net`'s SDPA attention through `grouped_sdpa_forward` (a network on another implementation is left alone)."""
    config = getattr(net, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = NAME
