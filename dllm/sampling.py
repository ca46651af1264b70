"""Semi-autoregressive masked-diffusion decoding that records each trajectory.

The response starts fully masked and is decoded block by block. At every step the
network predicts each masked position of the row's current block, a proposal token is
drawn for each (temperature / top-k / top-p), and a reveal strategy picks which of them
to keep. Revealed tokens stay revealed. What is recorded per position (the step it was
revealed, the confidence and the untempered top-k log-probs at that moment) describes
the trajectory losslessly: the state at step s is the final response with every
position revealed at step >= s masked.

Block alignment. Families whose blocks sit at absolute positions (`family.absolute_blocks`,
SDAR) count blocks as p // B from the row's first prompt token: full prompt blocks are
context, the prompt's tail (P mod B tokens) shares the first decoded block with masks
and is never revealed or overwritten. A row with a prompt of P tokens decodes the
L - (P mod B) columns [P, P + L - (P mod B)), so every decoded block is complete and
ends on an absolute block boundary, exactly as SDAR's own `block_diffusion_generate`
with gen_length = L - (P mod B); its last (P mod B) response columns are padding
(reveal_step -1, pad_id). Other families start the first block at the response.

A row stops once one of the model's stop ids (`model.eos_ids`) and everything before it
is revealed; the stop token is kept, everything after it becomes padding.

Noise is keyed by (row seed, step, response column) (t3d.dllm.noise), so a row decodes
the same alone, in any batch, in any slot. The network is called through a runner
(t3d.dllm.runners): an exact KV cache by default for block-causal families, the whole
sequence otherwise, Fast-dLLM's approximate prefix / dual caches on request.
`nfe` and `num_steps` count denoising steps; the cache's prefill and per-block commit
forwards are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.dllm.model import DiffusionLM
from t3d.dllm.engine import Engine, run
from t3d.dllm.reveal import CONFIDENCES, STRATEGIES
from t3d.dllm.runners import cache_modes, select_runner


SAMPLER_SETTINGS_ADDED_LATER = ("confidence", "entropy_budget")
"""SamplerConfig fields added after datasets were first collected: a dataset key leaves each out at its default."""


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How a response is decoded. Defaults suit the built-in task (16 tokens, blocks of 4)."""

    max_new_tokens: int = 16
    """Response length L; a multiple of block_size."""
    block_size: int = 4
    """Tokens per semi-autoregressive block B."""
    steps_per_block: int = 4
    """Denoising steps per block for the scheduled strategies: static (B / steps tokens per step) and dream."""
    strategy: str = "static"
    """Reveal rule: `static` (k most confident per step), `threshold` (all above it, at least one), `dream` (Dream's own step schedule) or `entropy_bounded` (most confident first while their entropies sum within entropy_budget)."""
    threshold: float = 0.9
    """Confidence above which the threshold strategy reveals a position."""
    confidence: str = "probability"
    """What ranks the masked positions: probability (of the proposal; Dream's maskgit_plus), margin (top-1 minus top-2; topk_margin) or entropy (negative entropy; Dream's entropy)."""
    entropy_budget: float = 0.5
    """Nats the entropy_bounded strategy may reveal per step (summed over the revealed positions; the first is always revealed)."""
    temperature: float = 1.0
    """Proposal temperature; 0 means greedy (argmax)."""
    top_k: int = 0
    """Keep only the k most likely proposal tokens; 0 keeps all."""
    top_p: float = 1.0
    """Nucleus filter on the proposal; 1.0 keeps all."""
    logits_top_k: int = 8
    """How many of the untempered model's top log-probs to record at each reveal; 0 records none."""
    record_states: bool = False
    """Also return the dense masked state the model saw at every step."""
    stop_at_eos: bool = True
    """Stop a row once a stop id (any of the model's eos ids) and everything before it is revealed; the rest is padding."""
    cache: str = "auto"
    """KV cache: auto (exact cache for block-causal models, none otherwise), none (rerun the whole sequence every step), prefix or dual (Fast-dLLM's approximate caches for bidirectional models)."""

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_new_tokens < 1:
            raise UserError("block_size and max_new_tokens must be positive")
        if self.max_new_tokens % self.block_size:
            raise UserError(f"max_new_tokens ({self.max_new_tokens}) must be a multiple of block_size ({self.block_size})")
        if not 1 <= self.steps_per_block <= self.block_size:
            raise UserError(f"steps_per_block must be between 1 and block_size ({self.block_size}), got {self.steps_per_block}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r} (known: {', '.join(sorted(STRATEGIES))})")
        if self.confidence not in CONFIDENCES:
            raise UserError(f"unknown confidence {self.confidence!r} (known: {', '.join(sorted(CONFIDENCES))})")
        if self.entropy_budget < 0:
            raise UserError(f"entropy_budget must be >= 0, got {self.entropy_budget}")
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.temperature < 0 or self.top_k < 0 or self.logits_top_k < 0:
            raise UserError("temperature, top_k and logits_top_k must be >= 0")
        if self.cache not in cache_modes():
            raise UserError(f"unknown cache {self.cache!r} (known: {', '.join(cache_modes())})")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def num_blocks(self) -> int:
        return self.max_new_tokens // self.block_size

    @property
    def full_steps(self) -> int:
        """Steps of a static decode that runs to the end (the network evaluations it costs)."""
        return self.num_blocks * self.steps_per_block


@dataclass
class SampleOutput:
    """What `sample` returns; shapes use N rows, L = max_new_tokens, S = max steps, k = logits_top_k."""

    tokens: np.ndarray  # (N, L) int64, pad after the first EOS
    reveal_step: np.ndarray  # (N, L) int16, -1 on padding after EOS
    confidence: np.ndarray  # (N, L) float32
    topk_logprobs: np.ndarray | None  # (N, L, k) float32
    topk_ids: np.ndarray | None  # (N, L, k) int32
    states: np.ndarray | None  # (N, S, L) int64: states[:, s] is the input of step s
    num_steps: np.ndarray  # (N,) int32, network evaluations per row
    finish_reason: list[str]  # "eos" | "length"
    nfe: int  # batched forward passes
    revealed: np.ndarray | None = None  # (N,) int32, tokens the sampler revealed per row, those after the stop id included

    @property
    def response_length(self) -> np.ndarray:
        """Tokens up to and including the first EOS (all L when there is none). (N,)"""
        return (self.reveal_step >= 0).sum(axis=1).astype(np.int32)


def check_prompt_lengths(model: DiffusionLM, prompts: list[list[int]], cfg: SamplerConfig) -> None:
    """One-line error naming the first prompt that does not fit the model with its response."""
    for index, prompt in enumerate(prompts):
        if len(prompt) + cfg.max_new_tokens > model.max_length:
            raise UserError(
                f"prompt {index} has {len(prompt)} tokens; with {cfg.max_new_tokens} new tokens it exceeds "
                f"the model's maximum length {model.max_length}"
            )



@torch.no_grad()
def sample(
    model: DiffusionLM,
    prompts: list[list[int]],
    cfg: SamplerConfig,
    seeds: list[int],
    max_batch: int | None = None,
) -> SampleOutput:
    """Decode one response per prompt (token id lists of any lengths), recording trajectories.

    max_batch: rows decoded at once (slots); a finished row's slot takes the next pending
    row at once (continuous batching). None: all rows at once. A row's result does not
    depend on it (nor on the other rows): only float rounding of its probabilities may.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    if not prompts:
        raise UserError("no prompts to sample")
    check_prompt_lengths(model, prompts, cfg)
    slots = len(prompts) if max_batch is None else max(1, min(max_batch, len(prompts)))
    engine = Engine(model, prompts, cfg, seeds, slots)
    run(engine, select_runner(engine, cfg.cache))
    return _finish(engine)


def _finish(engine: Engine) -> SampleOutput:
    """Turn everything after the first stop id into padding and pack numpy arrays."""
    model, cfg = engine.model, engine.cfg
    tokens = engine.out_tokens.cpu()  # (N, L)
    reveal = engine.out_reveal.cpu()
    length = cfg.max_new_tokens
    is_eos = torch.isin(tokens, engine.eos.cpu()) & (reveal >= 0)
    has_eos = is_eos.any(dim=1) & cfg.stop_at_eos
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), length)  # (N,)
    padding = (torch.arange(length)[None, :] > first[:, None]) | (reveal < 0)  # (N, L) after EOS, or never decoded
    tokens[padding] = model.pad_id
    k = engine.k
    return SampleOutput(
        tokens=tokens.numpy().astype(np.int64),
        reveal_step=reveal.masked_fill(padding, -1).numpy().astype(np.int16),
        confidence=engine.out_confidence.cpu().masked_fill(padding, 0.0).numpy(),
        topk_logprobs=engine.out_topk_logprobs.cpu().masked_fill(padding[..., None], 0.0).numpy() if k else None,
        topk_ids=engine.out_topk_ids.cpu().masked_fill(padding[..., None], 0).numpy().astype(np.int32) if k else None,
        states=_stack_states(engine, tokens, padding) if cfg.record_states else None,
        num_steps=engine.out_steps.copy(),
        finish_reason=["eos" if e else "length" for e in has_eos.tolist()],
        nfe=engine.nfe,
        revealed=(reveal >= 0).sum(dim=1).numpy().astype(np.int32),  # before the stop turns the rest into padding
    )


def _stack_states(engine: Engine, tokens: torch.Tensor, padding: torch.Tensor) -> np.ndarray:
    """(N, S, L): each row's recorded states, padded with its final response; padding shown as pad."""
    states = [s.cpu() for s in engine.out_states]
    steps = max(len(s) for s in states)
    out = tokens[:, None, :].repeat(1, steps, 1)  # (N, S, L)
    for i, rows in enumerate(states):
        if len(rows):
            out[i, : len(rows)] = rows
    out[padding[:, None, :].expand_as(out)] = engine.model.pad_id
    return out.numpy().astype(np.int64)
