"""What a model family is: how its checkpoint becomes a network and how that network is called.

A `Family` carries every family-specific fact as data or as a method, so that nothing
outside the registry compares family names:

- attention pattern (`block_causal`, `absolute_blocks`, `column_blocks`) and the additive
  masks it builds, for whole sequences and for the few query rows of a KV-cached step,
- training layout (`training_layout`: which input the trainer builds and with which mask),
- logit alignment (`align`: Dream-style families predict token i from row i - 1),
- the checkpoint layout (`architecture`: which transformers class the weights fit, the
  config mapping and the weight names), or None for networks that only run their own
  remote code,
- the published mask id, for configs that do not carry one,
- an example config.json in the published layout (`example_config`, for tests).

A family with its own attention pattern subclasses `Family`, overrides `column_blocks`
(or `attention_bias`) and names its `TrainingLayout`; `register_family` adds it from
anywhere, and nothing else changes (tests/trainer/test_toy_family.py does exactly that).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from t3d.dllm import masks
from t3d.dllm.errors import UserError
from t3d.dllm.training_layouts import BLOCK_CAUSAL, SEMI_AR, TrainingLayout


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


def qwen_example_config(*, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                        intermediate_size: int, dtype: str) -> dict[str, Any]:  # fmt: skip
    """The Qwen fields of a published Qwen2/Qwen3-based config.json (SDAR, Dream); special ids at the top."""
    mask, eos = vocab_size - 1, vocab_size - 2
    return {
        "hidden_size": hidden_size, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "num_hidden_layers": num_layers, "intermediate_size": intermediate_size, "vocab_size": vocab_size,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "tie_word_embeddings": False, "mask_token_id": mask, "eos_token_id": eos, "pad_token_id": eos,
        "torch_dtype": dtype, "rope_scaling": None,
    }


LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of transformers' Llama / Qwen2 / Qwen3 decoder layers (module names)."""


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
    training: TrainingLayout | None = None
    """How the trainer builds this family's states and input (`t3d.dllm.training_layouts`); None: the layout of
    its attention, every block at once when block-causal, one current block per row when bidirectional."""
    example_config: Callable[..., dict[str, Any]] | None = None
    """sizes -> a config.json shaped like the published checkpoint's (`t3d.dllm.tiny.real_layout_config`); None: none."""
    lora_targets: tuple[str, ...] = LLAMA_PROJECTIONS
    """Module names a LoRA student adapts by default (`--lora-r` without `--lora-targets`): the attention and MLP
    projections of the network as t3d builds it (transformers' names, which every native family loads into)."""

    @property
    def training_layout(self) -> TrainingLayout:
        """The `TrainingLayout` the trainer uses (see `training`)."""
        if self.training is not None:
            return self.training
        return BLOCK_CAUSAL if self.block_causal else SEMI_AR

    def trained_block_size(self, raw_config: dict[str, Any]) -> int | None:
        """The block size this family's network was trained with, from its raw config.json; None: not fixed."""
        value = raw_config.get(self.block_size_key) if self.block_size_key else None
        return int(value) if value else None

    def attention_bias(
        self, attention_mask: torch.Tensor, prompt_len: int, block_size: int | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """(B, 1, T, T) additive mask for a (B, T) bool padding mask; a query sees the keys `column_blocks` allows."""
        if not self.block_causal:
            return masks.bidirectional_mask(attention_mask, dtype)
        if block_size is None:
            raise UserError("a block-causal model needs a block size (set block_size in config.json or pass --block-size)")
        blocks = self.column_blocks(attention_mask, prompt_len, block_size)  # (B, T)
        allowed = blocks[:, None, :] <= blocks[:, :, None]  # (B, T, T) query row, key column
        return masks.additive(allowed & attention_mask[:, None, :] & attention_mask[:, :, None], dtype)

    def column_blocks(self, attention_mask: torch.Tensor, prompt_len: int, block_size: int) -> torch.Tensor:
        """(B, T) int64 attention block of every column of a block-causal family: a query sees the real keys
        of blocks <= its own. The same numbers build the whole-sequence mask and a KV-cached step's query rows
        (`t3d.dllm.runners`), so a family that overrides this decodes alike cached or not."""
        return masks.block_index(attention_mask, prompt_len, block_size, self.absolute_blocks)

    def query_bias(
        self, key_real: torch.Tensor, query_cols: torch.Tensor, key_block: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """(R, 1, q, W) the rows of `attention_bias` for queries at `query_cols` (R, q) over the keys of columns
        [0, W) (a KV-cached step); key_block (R, W): `column_blocks` of those columns, None when bidirectional.
        A family whose pattern is not "blocks <= its own" overrides this with `attention_bias`."""
        return masks.query_bias(key_real, query_cols, key_block, dtype)

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw network logits (B, T, V) -> logits whose row i predicts token i."""
        if not self.shifted:
            return logits
        # Row i - 1 predicts token i; position 0 has no predictor, keep its own row.
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, T, V)
