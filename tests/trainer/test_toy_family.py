"""A family defined here, with an attention pattern t3d does not ship, decodes and trains.

`ChunkCausal` sees in chunks of 2 response tokens: a query sees the prompt and the
chunks up to its own, so the two halves of a decoded block of 4 do not see each other
both ways. It is registered from this file (`register_family`) and touches no project
file: its attention is one method (`column_blocks`), its training input one
`TrainingLayout`. If the engine or the trainer picked masks or layouts by family name
or by the built-in flags instead of asking the family, the toy would be decoded or
trained with the built-in block-causal pattern and these tests fail:

- decoding: cached and uncached decodes are equal (the exact cache is valid: later
  chunks never change earlier ones), and differ from the same weights decoded as the
  built-in `block_causal` family (so the pattern is really the toy's);
- training: the trainer's states come from the toy's layout (its mask on the model
  input), and a few steps run with finite, non-zero gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t3d.dllm import SamplerConfig, load_model, masks, sample
from t3d.dllm.families import Family, get_family, register_family, unregister_family
from t3d.dllm.tiny import build_checkpoint
from t3d.dllm.training_layouts import ModelInputs, TrainingLayout
from t3d.trainer.config import build_config
from t3d.trainer.loop import build_trainer, train_step

CHUNK = 2
CALLS: list[tuple[int, int]] = []  # (rows, columns) of every training input the toy layout built


def chunks(length: int, device=None) -> torch.Tensor:
    """(L,) chunk of each response column."""
    return torch.arange(length, device=device) // CHUNK


def toy_inputs(prompt_ids, prompt_mask, clean, noisy, block_size, dtype, absolute=False) -> ModelInputs:
    """[prompt | clean | noisy] with the chunk pattern: a clean chunk sees the prompt and clean chunks <= it; a noisy
    chunk of block j sees the prompt, the clean blocks < j and the noisy chunks of block j up to its own (what
    the decoder shows block j)."""
    n, p = prompt_ids.shape
    length = clean.shape[1]
    CALLS.append((n, p + 2 * length))
    chunk, block = chunks(length), torch.arange(length) // block_size  # (L,)
    allowed = torch.zeros(p + 2 * length, p + 2 * length, dtype=torch.bool)  # query row, key column
    allowed[:, :p] = True
    clean_rows, noisy_rows = slice(p, p + length), slice(p + length, None)
    allowed[clean_rows, clean_rows] = chunk[None, :] <= chunk[:, None]
    allowed[noisy_rows, clean_rows] = block[None, :] < block[:, None]
    allowed[noisy_rows, noisy_rows] = (block[None, :] == block[:, None]) & (chunk[None, :] <= chunk[:, None])
    allowed[:p, p:] = False
    keys = torch.cat([prompt_mask.bool(), prompt_mask.new_ones((n, 2 * length), dtype=torch.bool)], dim=1)  # (N, T)
    prompt_pos = masks.position_ids(prompt_mask.bool())  # (N, P)
    response_pos = prompt_mask.sum(-1)[:, None] + torch.arange(length)  # (N, L)
    bias = masks.additive(allowed[None] & keys[:, None, :] & keys[:, :, None], dtype)
    ids = torch.cat([prompt_ids.long(), clean, noisy], dim=1)
    return ModelInputs(ids, keys, bias, torch.cat([prompt_pos, response_pos, response_pos], dim=1), p + length)


TOY_LAYOUT = TrainingLayout(name="toy_chunks", every_block=True, copies=2, inputs=toy_inputs)


class ChunkCausal(Family):
    def column_blocks(self, attention_mask, prompt_len, block_size):
        """The prompt is chunk 0, response column j is in chunk 1 + j // 2."""
        cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        ids = torch.where(cols < prompt_len, 0, 1 + (cols - prompt_len).clamp(min=0) // CHUNK)  # (T,)
        return ids[None, :].expand(attention_mask.shape[0], -1)


TOY = ChunkCausal(name="toy_chunks", description="chunk-causal attention, chunks of 2 (a test's own family)",
                  block_causal=True, training=TOY_LAYOUT)  # fmt: skip


@pytest.fixture
def toy(tmp_path):
    register_family(TOY)
    try:
        yield build_checkpoint(tmp_path / "toy", TOY.name, max_position_embeddings=32, seed=3)
    finally:
        unregister_family(TOY)


def _decode(model, cache: str):
    prompts = [[5, 9, 11], [7, 3, 20, 21, 4], [30, 8]]
    cfg = SamplerConfig(max_new_tokens=8, block_size=4, steps_per_block=2, logits_top_k=0, cache=cache)
    return sample(model, prompts, cfg, seeds=[0, 1, 2])


def test_the_toy_family_decodes_alike_cached_and_uncached(toy):
    model = load_model(toy)
    assert model.family is TOY and get_family(TOY.name) is TOY
    uncached, cached = _decode(model, "none"), _decode(model, "auto")  # auto: the exact cache (block-causal)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_array_equal(cached.reveal_step, uncached.reveal_step)
    np.testing.assert_allclose(cached.confidence, uncached.confidence, rtol=1e-5, atol=1e-6)
    builtin = _decode(load_model(toy, family="block_causal"), "none")  # same weights, the shipped pattern
    assert not np.allclose(builtin.confidence, uncached.confidence, rtol=1e-3, atol=1e-4)


def test_the_toy_family_trains_with_its_own_layout(kit, toy, tmp_path):
    data = kit.collect(tmp_path / "data", toy, prompts=12, shards=1)
    cfg = build_config(kit.flags(data, toy, tmp_path / "out", max_steps=2))
    trainer = build_trainer(cfg, log=lambda *a: None)
    assert trainer.states.layout is TOY_LAYOUT
    CALLS.clear()
    for _ in range(2):
        metrics = train_step(trainer, [trainer.loader.next_batch()])
        assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert CALLS and all(columns > 16 for _, columns in CALLS)  # [prompt | clean | noisy]: two 8-token copies
