"""LLaDA (LLaDA-8B-Instruct, LLaDA-1.5): a LLaMA network under OLMo-style names, bidirectional.

The checkpoint names `model.transformer.{wte, ln_f, ff_out}` and per block
`{q,k,v}_proj, attn_out, ff_proj (gate), up_proj, ff_out (down), attn_norm, ff_norm`;
they load into `LlamaForCausalLM` renamed. Its own forward takes no position ids and its
early revision ignores every attention mask, so it is never called: left padding and
positions are handled by the Llama call with a bidirectional mask.
"""

from __future__ import annotations

from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.families.base import Architecture, Family

_BLOCK = r"^model\.transformer\.blocks\.(\d+)\."
_LAYER = r"model.layers.\1."
_PER_BLOCK = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
}
_TOP = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head"}

RENAMES = tuple(
    [(rf"^model\.transformer\.{old}\.", f"{new}.") for old, new in _TOP.items()]
    + [(rf"{_BLOCK}{old}\.", rf"{_LAYER}{new}.") for old, new in _PER_BLOCK.items()]
)
EXPORT_RENAMES = tuple(
    [(rf"^{new.replace('.', chr(92) + '.')}\.", f"model.transformer.{old}.") for old, new in _TOP.items()]
    + [
        (rf"^model\.layers\.(\d+)\.{new.replace('.', chr(92) + '.')}\.", rf"model.transformer.blocks.\1.{old}.")
        for old, new in _PER_BLOCK.items()
    ]
)

# (config key, value LLaDA's LLaMA block needs): anything else is a network Llama does not compute.
_REQUIRED = (
    ("block_type", "llama"), ("layer_norm_type", "rms"), ("alibi", False), ("rope", True),
    ("activation_type", "silu"), ("input_emb_norm", False), ("scale_logits", False),
    ("attention_layer_norm", False), ("block_group_size", 1), ("bias_for_layer_norm", False),
    ("layer_norm_with_affine", True), ("clip_qkv", None),
)


class _LLaDAArchitecture(Architecture):
    def config_fields(self, raw: dict[str, Any], path: Any) -> dict[str, Any]:
        for key, needed in _REQUIRED:
            if key in raw and raw[key] != needed:
                raise UserError(
                    f"{path}/config.json: {key}={raw[key]!r} is not supported for LLaDA (t3d maps LLaDA onto Llama, "
                    f"which needs {key}={needed!r})"
                )
        heads = int(raw["n_heads"])
        kv_heads = 1 if raw.get("multi_query_attention") else int(raw.get("n_kv_heads") or heads)
        include_bias = bool(raw.get("include_bias", False))
        if raw.get("include_qkv_bias") and not include_bias:
            raise UserError(f"{path}/config.json: include_qkv_bias without include_bias is not supported for LLaDA")
        fields = dict(
            vocab_size=int(raw.get("embedding_size") or raw["vocab_size"]),
            hidden_size=int(raw["d_model"]),
            intermediate_size=int(raw.get("mlp_hidden_size") or raw["mlp_ratio"] * raw["d_model"]),
            num_hidden_layers=int(raw["n_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            tie_word_embeddings=bool(raw.get("weight_tying", False)),
            attention_bias=include_bias,
            mlp_bias=include_bias,
            hidden_act="silu",
        )
        for key in ("pad_token_id", "eos_token_id", "bos_token_id", "mask_token_id", "torch_dtype"):
            if key in raw:
                fields[key] = raw[key]
        return fields


def _example_config(*, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                    intermediate_size: int, dtype: str) -> dict[str, Any]:  # fmt: skip
    """LLaDA-8B-Instruct's config.json layout (OLMo-style keys; no grouped-query heads); special ids at the top."""
    mask, eos = vocab_size - 1, vocab_size - 2
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": hidden_size, "n_heads": num_heads,
        "n_kv_heads": num_heads, "n_layers": num_layers, "mlp_hidden_size": intermediate_size, "mlp_ratio": 4,
        "vocab_size": vocab_size, "embedding_size": vocab_size, "max_sequence_length": 4096,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False, "include_bias": False,
        "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
        "alibi": False, "mask_token_id": mask, "eos_token_id": eos, "pad_token_id": eos, "torch_dtype": dtype,
    }


LLADA = Family(
    name="llada",
    description="LLaDA: LLaMA under OLMo-style names, bidirectional attention",
    model_types=("llada",),
    architecture=_LLaDAArchitecture(
        config_class="LlamaConfig", model_class="LlamaForCausalLM", renames=RENAMES, export_renames=EXPORT_RENAMES
    ),
    mask_id=126336,
    example_config=_example_config,
)

LLADA_MOE = Family(
    name="llada_moe",
    description="LLaDA mixture-of-experts (not supported yet)",
    model_types=("llada_moe", "lladamoe"),
    architecture=None,
    mask_id=156895,
    unsupported="LLaDA-MoE checkpoints are not supported yet: their expert layout has no mapping onto a transformers class",
)
