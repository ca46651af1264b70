"""Randomly initialised checkpoints built from a config, for tests and GPU smoke checks.

They are saved with `save_pretrained` and loaded back through `load_model`, so tests
exercise the same path as a real checkpoint directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from t3d.dllm.families import get_family


def build_checkpoint(
    out_dir: str | Path,
    family: str = "bidirectional",
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 64,
    block_size: int | None = 4,
    mask_id: int | None = None,
    pad_id: int = 1,
    eos_id: int = 2,
    seed: int = 0,
    tokenizer=None,
) -> Path:
    """Write a tiny Llama-architecture DLLM of `family` to `out_dir` and return the path.

    mask_id defaults to the last id; pass mask_id=-1 to write a config without one.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    get_family(family)  # fail early on a typo
    out = Path(out_dir)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    config.t3d_family = family
    if block_size is not None:
        config.t3d_block_size = block_size
    if mask_id != -1:
        config.mask_token_id = vocab_size - 1 if mask_id is None else mask_id
    torch.manual_seed(seed)
    net = LlamaForCausalLM(config)
    net.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def real_layout_config(family: str, *, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2,
                       num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 64,
                       dtype: str = "bfloat16") -> dict:
    """A config.json shaped like the published one of `family` (sdar, llada, dream: its `example_config`), sizes
    as given.

    Special ids sit at the top of the vocabulary: mask = V-1, eos = V-2, turn end = V-3.
    """
    example = get_family(family).example_config
    if example is None:
        raise ValueError(f"no published layout for family {family!r}")
    return example(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                   num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, dtype=dtype)  # fmt: skip


def build_real_layout(
    out_dir: str | Path, family: str, *, shards: int = 1, seed: int = 0, device: str = "cpu", **sizes
) -> Path:
    """Write a random-weight checkpoint laid out like a published SDAR / LLaDA / Dream snapshot.

    config.json in the family's own format, weights under its own names and dtype
    (`shards` > 1: a safetensors index), generation_config.json with a turn-end stop id.
    Built by t3d itself, so loaders are tested without ../shared; see tests/dllm.
    """
    import json

    from t3d.dllm.families import get_family
    from t3d.dllm.weights import state_dict_for_export, write_shards

    raw = real_layout_config(family, **sizes)
    arch = get_family(family).architecture
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    import transformers

    with torch.device(device):  # a GPU builds a 4B-parameter network in seconds
        net = getattr(transformers, arch.model_class)(arch.build_config(dict(raw), out))
    dtype = getattr(torch, raw["torch_dtype"])
    write_shards(state_dict_for_export(net, arch.checkpoint_name, dtype), out, shards)
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    stops = [raw["eos_token_id"], raw["vocab_size"] - 3]
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}, indent=2) + "\n")
    return out
