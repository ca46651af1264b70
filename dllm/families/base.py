"""What a model family is: how its checkpoint becomes a network and how that network is called.

A `Family` carries every family-specific fact as data or as a method, so that nothing
outside the registry compares family names:

- attention layout (`block_causal`, `absolute_blocks`) and the additive mask it builds,
- logit alignment (`align`: Dream-style families predict token i from row i - 1),
- the checkpoint layout (`architecture`: which transformers class the weights fit, the
  config mapping and the weight names), or None for networks that only run their own
  remote code,
- the published mask id, for configs that do not carry one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from t3d.dllm import masks
from t3d.dllm.errors import UserError


@dataclass(frozen=True)
class Architecture:
    """How a checkpoint maps onto one of transformers' own classes.

    config_class / model_class: the transformers classes (imported lazily by name).
    renames: (checkpoint regex, transformers replacement) pairs applied in order; the
    inverse pairs (`export_renames`) turn a trained network back into checkpoint names.
    """

    config_class: str
    model_class: str
    renames: tuple[tuple[str, str], ...] = ()
    export_renames: tuple[tuple[str, str], ...] = ()

    def build_config(self, raw: dict[str, Any], path: Any) -> Any:
        """The transformers config of a checkpoint's raw config.json."""
        import transformers

        cls = getattr(transformers, self.config_class)
        return cls(**self.config_fields(raw, path))

    def config_fields(self, raw: dict[str, Any], path: Any) -> dict[str, Any]:
        """Keyword arguments for `config_class`; subclasses rename and check fields."""
        dropped = ("auto_map", "architectures", "model_type", "transformers_version")
        fields = {k: v for k, v in raw.items() if k not in dropped}
        if fields.get("rope_scaling") is None:  # null in published configs; transformers 5 warns on the key
            fields.pop("rope_scaling", None)
        return fields

    def native_name(self, name: str) -> str:
        """Checkpoint tensor name -> transformers parameter name."""
        for pattern, repl in self.renames:
            name = re.sub(pattern, repl, name)
        return name

    def checkpoint_name(self, name: str) -> str:
        """transformers parameter name -> the checkpoint's own tensor name (for export)."""
        for pattern, repl in self.export_renames:
            name = re.sub(pattern, repl, name)
        return name


IDENTITY = Architecture(config_class="AutoConfig", model_class="AutoModelForCausalLM")
"""A checkpoint already written by transformers (the built-in models): the config's own class."""


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
    shifted: bool = False
    """Row i of the network's logits predicts token i + 1 (Dream-style, inherited from AR training)."""
    model_types: tuple[str, ...] = ()
    """config.json `model_type` values (case-insensitive) this family loads natively."""
    architecture: Architecture | None = IDENTITY
    """How the weights load into a transformers class; None: only through the checkpoint's own code."""
    mask_id: int | None = None
    """The published mask token id, used when neither the config nor the tokenizer names one."""
    unsupported: str | None = None
    """Set for a model type t3d recognises but cannot load yet: the reason, shown to the user."""
    block_size_key: str | None = None
    """config.json key holding the block size the network was trained with (SDAR: `block_size`); None: any
    block size decodes as trained (bidirectional semi-AR families)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def trained_block_size(self, raw_config: dict[str, Any]) -> int | None:
        """The block size this family's network was trained with, from its raw config.json; None: not fixed."""
        value = raw_config.get(self.block_size_key) if self.block_size_key else None
        return int(value) if value else None

    def attention_bias(
        self, attention_mask: torch.Tensor, prompt_len: int, block_size: int | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """(B, 1, T, T) additive mask for a (B, T) bool padding mask."""
        if not self.block_causal:
            return masks.bidirectional_mask(attention_mask, dtype)
        if block_size is None:
            raise UserError("a block-causal model needs a block size (set block_size in config.json or pass --block-size)")
        return masks.block_causal_mask(attention_mask, prompt_len, block_size, dtype, absolute=self.absolute_blocks)

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw network logits (B, T, V) -> logits whose row i predicts token i."""
        if not self.shifted:
            return logits
        # Row i - 1 predicts token i; position 0 has no predictor, keep its own row.
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, T, V)
