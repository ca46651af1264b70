"""Model families: how a network is called and how its logits line up with positions.

Each family is one small object in a registry, picked by name. Adding a family means
adding one class here; nothing else branches on the family name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t3d.dllm import masks
from t3d.dllm.errors import UserError


@dataclass(frozen=True)
class Family:
    """Bidirectional attention, logits aligned with positions (LLaDA-style)."""

    name: str = "bidirectional"
    description: str = "bidirectional attention, logits[i] predicts token i (LLaDA-style)"
    block_causal: bool = False
    """A block sees itself and earlier blocks only: later blocks never change its logits (an exact KV cache)."""
    absolute_blocks: bool = False
    """Blocks sit at absolute positions from the first prompt token (SDAR): the prompt's tail shares the
    first decoded block. False: the first block starts at the response's first token."""

    def attention_bias(
        self, attention_mask: torch.Tensor, prompt_len: int, block_size: int | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """(B, 1, T, T) additive mask for a (B, T) bool padding mask."""
        return masks.bidirectional_mask(attention_mask, dtype)

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw network logits (B, T, V) -> logits whose row i predicts token i."""
        return logits


@dataclass(frozen=True)
class ShiftedFamily(Family):
    """Bidirectional, but logits[i] predicts token i + 1 (Dream-style, inherited from AR training)."""

    name: str = "shifted"
    description: str = "bidirectional attention, logits shifted by one (Dream-style)"

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        # Row i - 1 predicts token i; position 0 has no predictor, keep its own row.
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, T, V)


@dataclass(frozen=True)
class BlockCausalFamily(Family):
    """Bidirectional inside a block, causal across blocks (SDAR / block diffusion)."""

    name: str = "block_causal"
    description: str = "block-causal attention: a block sees itself and earlier blocks (SDAR-style)"
    block_causal: bool = True

    def attention_bias(
        self, attention_mask: torch.Tensor, prompt_len: int, block_size: int | None, dtype: torch.dtype
    ) -> torch.Tensor:
        if block_size is None:
            raise UserError("a block_causal model needs a block size (set t3d_block_size in config.json or pass --block-size)")
        return masks.block_causal_mask(attention_mask, prompt_len, block_size, dtype, absolute=self.absolute_blocks)


FAMILIES: dict[str, Family] = {f.name: f for f in (Family(), ShiftedFamily(), BlockCausalFamily())}

# model_type of known checkpoints -> family; a config field `t3d_family` overrides it.
KNOWN_MODEL_TYPES: dict[str, str] = {
    "llada": "bidirectional",
    "llada_moe": "bidirectional",
    "lladamoe": "bidirectional",
    "dream": "shifted",
    "sdar": "block_causal",
    "sdar_moe": "block_causal",
}

# Mask token ids of known checkpoints whose configs do not carry one.
KNOWN_MASK_IDS: dict[str, int] = {"llada": 126336, "dream": 151666, "sdar": 151669, "sdar_moe": 151669}


def get_family(name: str) -> Family:
    """The family registered under `name`, or a one-line error listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise UserError(f"unknown model family {name!r} (known: {known})") from None
