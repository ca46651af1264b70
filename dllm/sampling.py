"""Semi-autoregressive masked-diffusion decoding that records each trajectory.

The response starts fully masked and is decoded block by block. At every step the
network predicts each masked position of the row's current block, a proposal token is
drawn for each (temperature / top-k / top-p), and a reveal strategy picks which of them
to keep. Revealed tokens stay revealed. What is recorded per position (the step it was
revealed, the confidence and the untempered top-k log-probs at that moment) describes
the trajectory losslessly: the state at step s is the final response with every
position revealed at step >= s masked.

Every row owns a `torch.Generator` seeded from its own seed and draws its noise only
from it, so a batch of prompts of mixed lengths decodes exactly as one-by-one calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.dllm.model import DiffusionLM
from t3d.dllm.reveal import STRATEGIES, get_strategy


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How a response is decoded. Defaults suit the built-in task (16 tokens, blocks of 4)."""

    max_new_tokens: int = 16
    """Response length L; a multiple of block_size."""
    block_size: int = 4
    """Tokens per semi-autoregressive block B."""
    steps_per_block: int = 4
    """Denoising steps per block for the static strategy (B / steps tokens revealed per step)."""
    strategy: str = "static"
    """Reveal rule: `static` (k most confident per step) or `threshold` (all above it, at least one)."""
    threshold: float = 0.9
    """Confidence above which the threshold strategy reveals a position."""
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
    """Stop a row once an EOS and everything before it is revealed; the rest is padding."""

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_new_tokens < 1:
            raise UserError("block_size and max_new_tokens must be positive")
        if self.max_new_tokens % self.block_size:
            raise UserError(f"max_new_tokens ({self.max_new_tokens}) must be a multiple of block_size ({self.block_size})")
        if not 1 <= self.steps_per_block <= self.block_size:
            raise UserError(f"steps_per_block must be between 1 and block_size ({self.block_size}), got {self.steps_per_block}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r} (known: {', '.join(sorted(STRATEGIES))})")
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.temperature < 0 or self.top_k < 0 or self.logits_top_k < 0:
            raise UserError("temperature, top_k and logits_top_k must be >= 0")
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

    @property
    def response_length(self) -> np.ndarray:
        """Tokens up to and including the first EOS (all L when there is none). (N,)"""
        return (self.reveal_step >= 0).sum(axis=1).astype(np.int32)


@dataclass
class _Rows:
    """Mutable decoding state of a batch; response columns start at `prompt_len`."""

    ids: torch.Tensor  # (N, P + L) int64
    attention: torch.Tensor  # (N, P + L) bool
    prompt_len: int
    reveal_step: torch.Tensor  # (N, L) int64, -1 = not yet revealed
    confidence: torch.Tensor  # (N, L) float32
    topk_logprobs: torch.Tensor  # (N, L, k)
    topk_ids: torch.Tensor  # (N, L, k)
    block: torch.Tensor  # (N,) current block
    step: torch.Tensor  # (N,) global step
    step_in_block: torch.Tensor  # (N,)
    done: torch.Tensor  # (N,) bool
    states: list[list[torch.Tensor]]  # per row, the response at the input of each step


def check_prompt_lengths(model: DiffusionLM, prompts: list[list[int]], cfg: SamplerConfig) -> None:
    """One-line error naming the first prompt that does not fit the model with its response."""
    for index, prompt in enumerate(prompts):
        if len(prompt) + cfg.max_new_tokens > model.max_length:
            raise UserError(
                f"prompt {index} has {len(prompt)} tokens; with {cfg.max_new_tokens} new tokens it exceeds "
                f"the model's maximum length {model.max_length}"
            )


@torch.no_grad()
def sample(model: DiffusionLM, prompts: list[list[int]], cfg: SamplerConfig, seeds: list[int]) -> SampleOutput:
    """Decode one response per prompt (token id lists of any lengths), recording trajectories."""
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    if not prompts:
        raise UserError("no prompts to sample")
    check_prompt_lengths(model, prompts, cfg)
    rows = _init_rows(model, prompts, cfg)
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    nfe = 0
    while not bool(rows.done.all()):
        active = (~rows.done).nonzero().squeeze(1)  # (R,)
        _decode_step(model, rows, active, cfg, generators)
        nfe += 1
    return _finish(model, rows, cfg, nfe)


def _init_rows(model: DiffusionLM, prompts: list[list[int]], cfg: SamplerConfig) -> _Rows:
    n, length = len(prompts), cfg.max_new_tokens
    plen = max(len(p) for p in prompts)
    ids = torch.full((n, plen + length), model.pad_id, dtype=torch.long)
    attention = torch.zeros((n, plen + length), dtype=torch.bool)
    for i, prompt in enumerate(prompts):  # left padding: every response starts at column plen
        ids[i, plen - len(prompt) : plen] = torch.tensor(prompt, dtype=torch.long)
        attention[i, plen - len(prompt) :] = True
    ids[:, plen:] = model.mask_id
    k = min(cfg.logits_top_k, model.vocab_size)
    zeros = torch.zeros(n, dtype=torch.long)
    return _Rows(
        ids=ids.to(model.device),
        attention=attention.to(model.device),
        prompt_len=plen,
        reveal_step=torch.full((n, length), -1, dtype=torch.long),
        confidence=torch.zeros((n, length), dtype=torch.float32),
        topk_logprobs=torch.zeros((n, length, k), dtype=torch.float32),
        topk_ids=torch.zeros((n, length, k), dtype=torch.long),
        block=zeros.clone(),
        step=zeros.clone(),
        step_in_block=zeros.clone(),
        done=torch.zeros(n, dtype=torch.bool),
        states=[[] for _ in range(n)],
    )


def _block_logits(model: DiffusionLM, rows: _Rows, active: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """Untempered logits (R, B, V) over each active row's current block."""
    width = rows.prompt_len + cfg.max_new_tokens
    if model.family.name == "block_causal":  # later blocks are invisible: cut them off
        width = rows.prompt_len + (int(rows.block[active].max()) + 1) * cfg.block_size
    ids = rows.ids[active, :width]  # (R, T)
    logits = model.logits(ids, rows.attention[active, :width], prompt_len=rows.prompt_len, block_size=cfg.block_size)
    start = rows.prompt_len + rows.block[active].to(logits.device) * cfg.block_size  # (R,)
    cols = start[:, None] + torch.arange(cfg.block_size, device=logits.device)[None, :]  # (R, B)
    picked = logits.gather(1, cols[:, :, None].expand(-1, -1, logits.shape[-1]))  # (R, B, V)
    picked = picked.float().cpu()
    picked[..., model.mask_id] = float("-inf")  # the mask token is never a proposal
    return picked


def _propose(logits: torch.Tensor, cfg: SamplerConfig, generators: list[torch.Generator], active: torch.Tensor) -> torch.Tensor:
    """Proposal tokens (R, B): Gumbel-max over the filtered, tempered logits, one generator per row."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    scores = _filter(logits / cfg.temperature, cfg.top_k, cfg.top_p)  # (R, B, V)
    noise = torch.stack([torch.rand(scores.shape[1:], generator=generators[int(i)]) for i in active])  # (R, B, V)
    gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
    return (scores + gumbel).argmax(dim=-1)


def _filter(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering; the most likely token always survives."""
    if top_k and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]  # (R, B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def _decode_step(
    model: DiffusionLM, rows: _Rows, active: torch.Tensor, cfg: SamplerConfig, generators: list[torch.Generator]
) -> None:
    """One network evaluation for the active rows: propose, choose, reveal, advance blocks."""
    logits = _block_logits(model, rows, active, cfg)  # (R, B, V)
    logprobs = logits.log_softmax(dim=-1)  # (R, B, V) untempered: what the model believes
    proposal = _propose(logits, cfg, generators, active)  # (R, B)
    confidence = logprobs.gather(-1, proposal[..., None]).squeeze(-1).exp()  # (R, B)
    offsets = rows.block[active] * cfg.block_size  # (R,)
    cols = offsets[:, None] + torch.arange(cfg.block_size)[None, :]  # (R, B) response columns
    masked = rows.reveal_step[active[:, None], cols] < 0  # (R, B)
    if cfg.record_states:
        for r, i in enumerate(active.tolist()):
            rows.states[i].append(rows.ids[i, rows.prompt_len :].cpu().clone())
    chosen = get_strategy(cfg.strategy).choose(confidence, masked, rows.step_in_block[active], cfg)  # (R, B)
    _reveal(rows, active, cols, chosen, proposal, confidence, logprobs, cfg)
    _advance(model, rows, active, cfg)


def _reveal(rows, active, cols, chosen, proposal, confidence, logprobs, cfg) -> None:
    r_idx, b_idx = chosen.nonzero(as_tuple=True)
    row_ids, col_ids = active[r_idx], cols[r_idx, b_idx]
    rows.ids[row_ids.to(rows.ids.device), (rows.prompt_len + col_ids).to(rows.ids.device)] = proposal[r_idx, b_idx].to(rows.ids.device)
    rows.reveal_step[row_ids, col_ids] = rows.step[row_ids]
    rows.confidence[row_ids, col_ids] = confidence[r_idx, b_idx]
    k = rows.topk_logprobs.shape[-1]
    if k:
        top = logprobs[r_idx, b_idx].topk(k, dim=-1)  # (n_revealed, k)
        rows.topk_logprobs[row_ids, col_ids] = top.values
        rows.topk_ids[row_ids, col_ids] = top.indices


def _advance(model: DiffusionLM, rows: _Rows, active: torch.Tensor, cfg: SamplerConfig) -> None:
    """Count the step; move rows whose block is complete on, and stop rows that are finished.

    Vectorised over the active rows: one device-to-host copy per step, not one per row.
    """
    rows.step[active] += 1
    rows.step_in_block[active] += 1
    response = rows.ids[active, rows.prompt_len :].cpu()  # (R, L)
    revealed = rows.reveal_step[active] >= 0  # (R, L)
    finished = _eos_complete(response, revealed, model.eos_id) & cfg.stop_at_eos  # (R,)
    cols = rows.block[active, None] * cfg.block_size + torch.arange(cfg.block_size)[None, :]  # (R, B)
    moved = active[revealed.gather(1, cols).all(dim=1) & ~finished]
    rows.done[active[finished]] = True
    rows.block[moved] += 1
    rows.step_in_block[moved] = 0
    rows.done[moved] = rows.block[moved] >= cfg.num_blocks


def _eos_complete(response: torch.Tensor, revealed: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(R,) True once some EOS is revealed and every position before it is revealed too."""
    eos = (response == eos_id) & revealed  # (R, L)
    first = eos.float().argmax(dim=1)  # (R,) first revealed EOS (0 when there is none)
    before = torch.arange(response.shape[1])[None, :] < first[:, None]  # (R, L)
    return eos.any(dim=1) & (revealed | ~before).all(dim=1)


def _finish(model: DiffusionLM, rows: _Rows, cfg: SamplerConfig, nfe: int) -> SampleOutput:
    """Turn everything after the first EOS into padding and pack numpy arrays."""
    tokens = rows.ids[:, rows.prompt_len :].cpu().clone()  # (N, L)
    length = cfg.max_new_tokens
    is_eos = (tokens == model.eos_id) & (rows.reveal_step >= 0)
    has_eos = is_eos.any(dim=1) & torch.tensor(cfg.stop_at_eos)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(rows.step, length))  # (N,)
    padding = torch.arange(length)[None, :] > first[:, None]  # (N, L)
    tokens[padding] = model.pad_id
    reveal_step = rows.reveal_step.masked_fill(padding, -1)
    confidence = rows.confidence.masked_fill(padding, 0.0)
    topk_lp = rows.topk_logprobs.masked_fill(padding[..., None], 0.0)
    topk_ids = rows.topk_ids.masked_fill(padding[..., None], 0)
    k = topk_lp.shape[-1]
    return SampleOutput(
        tokens=tokens.numpy().astype(np.int64),
        reveal_step=reveal_step.numpy().astype(np.int16),
        confidence=confidence.numpy(),
        topk_logprobs=topk_lp.numpy() if k else None,
        topk_ids=topk_ids.numpy().astype(np.int32) if k else None,
        states=_stack_states(rows, tokens, padding, model.pad_id) if cfg.record_states else None,
        num_steps=rows.step.numpy().astype(np.int32),
        finish_reason=["eos" if e else "length" for e in has_eos.tolist()],
        nfe=nfe,
    )


def _stack_states(rows: _Rows, tokens: torch.Tensor, padding: torch.Tensor, pad_id: int) -> np.ndarray:
    """(N, S, L): each row's recorded states, padded with its final response; padding shown as pad."""
    steps = max(len(s) for s in rows.states)
    out = tokens[:, None, :].repeat(1, steps, 1)  # (N, S, L)
    for i, states in enumerate(rows.states):
        if states:
            out[i, : len(states)] = torch.stack(states)
    out[padding[:, None, :].expand_as(out)] = pad_id
    return out.numpy().astype(np.int64)
