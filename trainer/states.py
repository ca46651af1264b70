"""Training states from teacher trajectories (DESIGN.md section 5).

A trajectory row is `x0` (L,) and `reveal_step` (L,): the teacher saw, as the input of
global step s, x0 with every position where reveal_step >= s masked. Response blocks
of `block_size` were decoded one after another, so block j occupied the steps
[lo_j, hi_j] (first and last reveal step in the block).

Padding after EOS (reveal_step -1) is never supervised by default: the first EOS is a
decoded token like any other (in M when masked, in the path window when the teacher
revealed it there), the positions after it are in neither, so no mean of the loss counts
them (the official T3D code does the same; supervising them floods M on real data, where
a 50-token answer padded to 1,024 would be 95 % padding). `supervise_padding=True`
restores LLaDA's SFT habit: padding is then supervised with EOS as its target. Either
way, padding *shows* as EOS when revealed, the token a model sees there when it decodes
(`pad_id` never appears in a response), and it gets virtual reveal steps after the
teacher's last one, E = 1 + max(reveal_step): padding in the EOS block at E, each block
of padding only at one more step (E + 1, E + 2, ...; `effective_reveal_step`). So
padding is masked in every state of the EOS block, and a block of padding only is a
fully masked block whose one state step is its virtual step, with every earlier block
clean. Under absolute blocks the columns the decoder never reached (the last P mod B
response columns) are padding of the same kind and are never supervised either.

State step: the global step s whose input a block shows. Per block:
- `state_order="trajectory"` (default): s is uniform over the steps the teacher spent
  on the block, [lo_j, hi_j]; s = lo_j is "nothing revealed yet". The block then holds
  exactly what the teacher had revealed before step s.
- `state_order="reference"`: reproduces the T3D reference implementation: a mask ratio
  r in {1, 0.75, 0.5, 0.25} with weights r**8 (normalised; ~91% fully masked), and the
  ceil(r·B) positions revealed *first* (ties by position) are masked, the reverse of a
  real trajectory (ceil only matters when B is not a multiple of 4; it keeps one
  masked position). s is reported as lo_j, exact for the fully masked blocks.

Absolute blocks (`absolute_blocks`, SDAR): blocks sit at absolute positions p // B from
the first prompt token, so a prompt of P tokens ends with a tail of r = P mod B tokens
that shares the first response block; the sampler decodes [P, P + L - r) and leaves the
last r response columns as padding. States are then cut in *section* coordinates: the
response copies start at the first block holding a response token, column c holding
position P - r + c, so columns c < r are the prompt's tail (always shown, never
supervised) and every block of the copies is a whole absolute block. `shift` (r per
row) maps column c to response position c - shift; without absolute blocks it is 0 and
columns are response positions.

- `state_order="paper"`: the official code's rule exactly (Tyrion58/T3D
  train/prepare.py): one ratio r (weights r**8) per *sequence*, and in each block the
  int(n·r) first-decoded of its n *valid* (decoded, not padding) positions are masked.
  Its companions, set together by `--preset paper`: `random_count="exact"` (exactly
  max(1, floor(random_ratio·|M|)) random tokens per sequence, uniformly among M),
  `path_mode="levels"` (`paper_path_weights`), `padding_shows="pad"` (the pad token stays
  visible after EOS in both copies, so the model sees where an answer ends: a quirk).
- `state_order="dparallel"`: dParallel's states (czg1225/dParallel, LLaDA/llada_train.py:
  91-143): every position masked independently with probability ~0.5, ignoring the
  teacher's order; with the semi_ar layout and `supervise_padding` (dParallel pads with EOS
  and supervises it) a row is its state exactly: one block uniform, earlier blocks clean,
  later ones masked. For `--loss certainty` (docs/OBJECTIVES.md).

Two views, picked by the family's training layout (`layout`, a `TrainingLayout` from
`t3d.dllm.training_layouts`, which also builds the input and its mask; nothing here asks
which family or layout it is):
- every block at once (`every_block`, the "block_causal" layout): each block at its own
  state step; the input is [prompt | clean response | noisy response] with a mask where
  each noisy block sees the prompt, the clean blocks before it and itself. With absolute blocks
  the prompt section holds the prompt's whole blocks (block-causal among themselves,
  as SDAR prefills them) and both copies start with the prompt's tail, so a noisy
  block is exactly the input SDAR's decoder gives that block at that step.
- one current block (the "semi_ar" layout): one state per row for bidirectional models:
  a current block c, uniform over the blocks holding a decoded token (over all blocks
  with `supervise_padding`); blocks before c clean, c at its state step, blocks after c
  fully masked. Input [prompt | noisy response]; only block c is supervised, since that is
  the only block a semi-autoregressive sampler reveals from this state.

`random_ratio` of the supervised positions show a uniformly random token from
`random_vocab` instead of the mask (they stay supervised, targets stay x0).
Randomness comes only from `generator`, drawn in a fixed order, so a seed fixes the
states.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from t3d.dllm import masks
from t3d.dllm.errors import UserError
from t3d.dllm.training_layouts import (  # noqa: F401  (re-exported: the layouts' inputs are part of the states API)
    ModelInputs, TrainingLayout, absolute_block_causal_pattern, block_causal_inputs, block_causal_pattern,
    get_training_layout, semi_ar_inputs,
)


@dataclass(frozen=True, kw_only=True)
class StatesConfig:
    """How training states are cut from the teacher's trajectories (DESIGN.md section 5)."""

    state_order: str = "trajectory"
    """`trajectory`: true teacher states; `reference`: ratio r**8 per block, ceil over the block; `paper`: the official rule (ratio per sequence, int(n·r) of the valid tokens); `dparallel`: each position masked independently at about 0.5 (dParallel's, for --loss certainty)."""
    random_ratio: float = 0.1
    """Share of supervised positions shown as a random token instead of the mask."""
    path_k_steps: int = 1
    """Teacher steps fused into one student step by the path loss; the block size B for a one-step-per-block student."""
    supervise_padding: bool = False
    """Supervise the padding after a response's first EOS (as EOS, LLaDA's SFT habit); default: only up to the first EOS."""
    random_count: str = "share"
    """`share`: each supervised position random with probability --random-ratio; `exact`: max(1, floor(ratio·|M|)) per row (official)."""
    path_mode: str = "steps"
    """`steps`: CE on what the teacher reveals in the next --path-k-steps steps; `levels`: the official level-averaged path loss, --path-k-steps tokens a level."""
    padding_shows: str = "eos"
    """What padding after EOS shows in the input: `eos` (what a decoder shows) or `pad` (the official code's pad tokens)."""
    fixed_states: bool = False
    """Build each row's training state once for all epochs (the official code); default: a fresh state every epoch."""

    def __post_init__(self) -> None:
        for name, known in CHOICES.items():  # the values are the keys of the states' own registries
            _one_of(f"--{name.replace('_', '-')}", getattr(self, name), known)
        if not 0.0 <= self.random_ratio <= 1.0:
            raise UserError(f"--random-ratio must be in [0, 1], got {self.random_ratio}")
        if self.path_k_steps < 1:
            raise UserError(f"--path-k-steps must be >= 1, got {self.path_k_steps}")


def _one_of(flag: str, value: str, known: tuple[str, ...]) -> None:
    """`value` is one of a registry's keys, or a one-line error naming the flag and the keys."""
    listed = f"{', '.join(known[:-1])} or {known[-1]}" if len(known) > 1 else known[0]
    if value not in known:
        raise UserError(f"{flag} must be {listed}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class StateConfig(StatesConfig):
    """The user's `StatesConfig` and what the model and the data fix: blocks, special ids, layout."""

    block_size: int
    """Response block length of the teacher's semi-autoregressive decoding; divides L."""
    mask_id: int
    """The model's mask token."""
    eos_id: int
    """Target (and revealed token) of padding after EOS."""
    layout: TrainingLayout | str = "block_causal"
    """The family's `TrainingLayout` (or a registered one's name): "block_causal" trains all blocks in one forward,
    "semi_ar" one state per row for bidirectional models."""
    random_vocab: tuple[int, int] | None = None
    """[low, high) ids random tokens are drawn from (exclude special tokens); needed if random_ratio > 0."""
    absolute_blocks: bool = False
    """Blocks at absolute positions from the first prompt token (SDAR; block_causal layout only)."""
    pad_id: int = 0
    """The pad token (shown on padding with padding_shows="pad")."""
    pad_columns: int = 0
    """Padding columns appended to every response before cutting (a training block that does not divide L,
    or absolute blocks larger than the rollout's)."""

    @classmethod
    def of(cls, settings: StatesConfig, **fixed) -> StateConfig:
        """The user's settings with what the model and data fix (`fixed`: the fields above)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(StatesConfig)}, **fixed)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.random_ratio > 0 and (self.random_vocab is None or self.random_vocab[0] >= self.random_vocab[1]):
            raise ValueError("random_ratio > 0 needs random_vocab = (low, high) with low < high")
        try:
            object.__setattr__(self, "layout", get_training_layout(self.layout))
        except UserError as err:
            raise ValueError(str(err)) from None
        if self.absolute_blocks and not self.layout.absolute_blocks:
            raise ValueError(f"absolute_blocks needs a layout that places them (the {self.layout.name} layout does not)")
        if self.pad_columns < 0:
            raise ValueError("pad_columns >= 0")


@dataclass(frozen=True)
class TrainingStates:
    """A batch of training states. N rows, P prompt columns, L response columns,
    nb = L / block_size blocks, T model columns (P + 2L block-causal, P + L semi-AR).

    The (N, L) fields are in section coordinates: column c is response position
    c - shift (c < shift: the prompt's tail under absolute blocks; shift is 0 otherwise).
    """

    input_ids: Tensor
    """(N, T) int64 model input."""
    attention_mask: Tensor
    """(N, T) bool, False on (left) prompt padding."""
    attention_bias: Tensor
    """(N, 1, T, T) additive float mask (0 attend, finfo.min not); padding rows see themselves."""
    position_ids: Tensor
    """(N, T) int64, from the first real prompt token; the two response copies share them."""
    response_start: int
    """Column of the supervised response copy: use logits[:, response_start:response_start + L]."""
    targets: Tensor
    """(N, L) int64, x0 with EOS on padding."""
    noisy: Tensor
    """(N, L) int64, the response as the model sees it (mask / random / revealed)."""
    supervised: Tensor
    """(N, L) bool, M: masked or randomised positions that the loss reads (no padding unless supervise_padding)."""
    randomized: Tensor
    """(N, L) bool, the supervised positions showing a random token (subset of supervised)."""
    path: Tensor
    """(N, L) bool, supervised positions the teacher reveals in [s, s + K) (subset of supervised)."""
    padding: Tensor
    """(N, L) bool, padding after EOS (targets EOS; no teacher top-k there)."""
    state_step: Tensor
    """(N, nb) int64, the state step of each block (semi_ar: the current block's, for all)."""
    current_block: Tensor | None
    """(N,) int64 current block (semi_ar), None for block_causal."""
    shift: Tensor
    """(N,) int64 prompt-tail tokens at the start of the response copies (P mod B with absolute blocks, else 0)."""
    tail: Tensor
    """(N, L) bool, the prompt's tail columns (shown as is, never supervised)."""
    path_weight: Tensor | None = None
    """(N, L) float32 per-position weights of the path loss (path_mode="levels"), None: a token mean over `path`."""
    mask_ratio: Tensor | None = None
    """(N,) float32 the mask ratio drawn for each row (state_order="paper")."""


def response_targets(x0: Tensor, reveal_step: Tensor, eos_id: int) -> Tensor:
    """(N, L) int64: x0 with padding after EOS (reveal_step < 0) replaced by EOS."""
    return torch.where(reveal_step < 0, eos_id, x0.long())


def effective_reveal_step(reveal_step: Tensor, block_size: int) -> Tensor:
    """(N, L) int64 reveal steps with padding given virtual steps after the teacher's last.

    E = 1 + max reveal step. Padding in the EOS block is revealed at E; each block
    made only of padding is one more step, E + 1, E + 2, ..., as if decoding went on
    one step per trailing block. So the global state at any of these steps still
    shows every earlier block clean and every later one masked.
    """
    reveal = reveal_step.long()
    padding = reveal < 0
    end = reveal.max(dim=-1, keepdim=True).values + 1  # (N, 1)
    block = torch.arange(reveal.shape[-1], device=reveal.device) // block_size  # (L,)
    last_real = torch.where(padding, -1, block).max(dim=-1, keepdim=True).values  # (N, 1)
    return torch.where(padding, end + block - last_real.clamp(min=0), reveal)


def block_step_range(reveal: Tensor, padding: Tensor, tail: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The steps the teacher spent on each block: (lo, hi), each (N, nb).

    reveal: (N, nb, B) effective reveal steps; padding, tail: (N, nb, B) bool. lo is
    the first reveal step in the block, hi the last one over real tokens; a block of
    padding only has lo = hi = its virtual step. The prompt's tail was never decoded:
    it takes no part.
    """
    if tail is None:
        tail = torch.zeros_like(padding)
    lo = torch.where(tail, torch.iinfo(reveal.dtype).max, reveal).min(dim=-1).values  # (N, nb)
    hi = torch.where(padding | tail, -1, reveal).max(dim=-1).values  # (N, nb)
    return lo, torch.where(hi < 0, lo, hi)


def path_mask(reveal_step: Tensor, state_step: Tensor, k_steps: int) -> Tensor:
    """Positions the teacher reveals in [s, s + K): K teacher steps fused into one.

    reveal_step: (N, L) effective reveal steps (`effective_reveal_step`, so padding
    joins the window that reaches the end step); state_step: (N, L) or broadcastable.
    Returns (N, L) bool.
    """
    return (reveal_step >= state_step) & (reveal_step < state_step + k_steps)


def _generator_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) drawn on the generator's device, returned on `device`."""
    return torch.rand(shape, generator=generator, device=_generator_device(generator, device)).to(device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator, device: torch.device) -> Tensor:
    out = torch.randint(low, high, shape, generator=generator, device=_generator_device(generator, device))
    return out.to(device)


def _trajectory_order(reveal: Tensor, padding: Tensor, tail: Tensor, generator) -> tuple[Tensor, Tensor]:
    """A uniform step in [lo, hi] per block; masked where reveal >= step (the tail's -1 never is).
    -> (N, nb, B), (N, nb)."""
    lo, hi = block_step_range(reveal, padding, tail)  # (N, nb)
    span = hi - lo + 1  # (N, nb)
    offset = (_uniform(tuple(lo.shape), generator, lo.device) * span).long()
    step = lo + torch.minimum(offset, span - 1)  # (N, nb)
    return reveal >= step.unsqueeze(-1), step


_REFERENCE_RATIOS = (1.0, 0.75, 0.5, 0.25)


def _reference_order(reveal: Tensor, padding: Tensor, tail: Tensor, generator) -> tuple[Tensor, Tensor]:
    """The reference code's states: ratio r ~ r**8, mask the ceil(r·n) first-revealed of the n decoded
    positions of a block (n = B but in a block shared with the prompt's tail, which is ranked last)."""
    n, nb, size = reveal.shape
    ratios = torch.tensor(_REFERENCE_RATIOS, device=_generator_device(generator, reveal.device))
    picks = torch.multinomial(ratios**8, n * nb, replacement=True, generator=generator)
    decoded = (size - tail.sum(-1, keepdim=True)).to(ratios.dtype)  # (N, nb, 1)
    n_masked = torch.ceil(ratios[picks].to(reveal.device).view(n, nb, 1) * decoded).long()
    key = torch.where(tail, torch.iinfo(reveal.dtype).max, reveal)
    order = torch.argsort(key, dim=-1, stable=True)  # (N, nb, B) first revealed first
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(size, device=reveal.device).expand_as(order))
    lo, _ = block_step_range(reveal, padding, tail)
    return rank < n_masked, lo


def decode_rank(reveal: Tensor, valid: Tensor) -> Tensor:
    """(N, nb, B) rank of each valid position in its block's decode order (reveal step, ties by
    position); invalid positions rank after every valid one."""
    size = reveal.shape[-1]
    key = torch.where(valid, reveal, torch.iinfo(reveal.dtype).max)
    order = torch.argsort(key, dim=-1, stable=True)  # (N, nb, B) first decoded first
    return torch.empty_like(order).scatter_(-1, order, torch.arange(size, device=reveal.device).expand_as(order))


def _paper_order(reveal: Tensor, padding: Tensor, tail: Tensor, generator) -> tuple[Tensor, Tensor, Tensor]:
    """The official rule: one ratio r ~ r**8 per row; per block mask the int(n·r) first-decoded
    of its n valid positions. -> masked (N, nb, B), state step (N, nb) (lo), ratio (N,)."""
    n = reveal.shape[0]
    ratios = torch.tensor(_REFERENCE_RATIOS, device=_generator_device(generator, reveal.device))
    ratio = ratios[torch.multinomial(ratios**8, n, replacement=True, generator=generator)].to(reveal.device)  # (N,)
    valid = ~padding & ~tail  # (N, nb, B)
    n_masked = (ratio[:, None] * valid.sum(-1)).long()  # (N, nb): int(n·r); r is dyadic, so exact
    masked = valid & (decode_rank(reveal, valid) < n_masked[..., None])
    lo, _ = block_step_range(reveal, padding, tail)
    return masked, lo, ratio


def paper_path_weights(reveal: Tensor, valid: Tensor, k_tokens: int) -> Tensor:
    """The official path loss as per-position weights, (N, nb, B) reveal/valid -> (N, L) float32.

    Levels s = 0 .. S-1, S = ceil(B / k): level s holds, in every block, the first
    min((s+1)·k, n) valid positions in decode order; its loss is the token mean of the CE
    against x0 over those positions of the row, and the row's path loss the mean over its
    non-empty levels. So the weight of position i is Σ_s [i in level s] / |level s| / S'.
    """
    n, nb, size = reveal.shape
    rank = decode_rank(reveal, valid)  # (N, nb, B)
    count = valid.sum(-1, keepdim=True)  # (N, nb, 1)
    weight = torch.zeros(n, nb, size, dtype=torch.float32, device=reveal.device)
    levels = torch.zeros(n, dtype=torch.float32, device=reveal.device)
    for s in range(-(-size // k_tokens)):
        level = valid & (rank < torch.minimum(count, torch.tensor((s + 1) * k_tokens)))  # (N, nb, B)
        tokens = level.sum(dim=(1, 2)).float()  # (N,)
        weight += level / tokens.clamp(min=1)[:, None, None]
        levels += (tokens > 0).float()
    return (weight / levels.clamp(min=1)[:, None, None]).flatten(1)


DPARALLEL_MASK_P = (1 - 1e-3) * 0.5 + 1e-3
"""dParallel's masking probability, (1 - eps) t + eps with t = 0.5 (czg1225/dParallel LLaDA/llada_train.py:128-129)."""


def _dparallel_order(reveal: Tensor, padding: Tensor, tail: Tensor, generator) -> tuple[Tensor, Tensor]:
    """dParallel's states: every decoded or padding position masked independently with probability
    `DPARALLEL_MASK_P`, whatever the teacher's order (the prompt's tail never). s is reported as lo_j."""
    u = _uniform(tuple(reveal.shape), generator, reveal.device)  # (N, nb, B)
    lo, _ = block_step_range(reveal, padding, tail)
    return (u < DPARALLEL_MASK_P) & ~tail, lo


_ORDERS: dict[str, Callable[..., tuple]] = {
    "trajectory": _trajectory_order,
    "reference": _reference_order,
    "paper": _paper_order,
    "dparallel": _dparallel_order,
}


class _View(NamedTuple):
    masked: Tensor  # (N, L) bool
    supervised: Tensor  # (N, L) bool
    state_step: Tensor  # (N, nb)
    current_block: Tensor | None  # (N,)
    trained: Tensor  # (N, L) bool, the columns of the blocks this view trains


def _block_view(masked: Tensor, step: Tensor, real_blocks: Tensor, generator) -> _View:
    """Every block at its own state, all supervised."""
    flat = masked.flatten(1)  # (N, L)
    return _View(flat, flat, step, None, torch.ones_like(flat))


def _semi_ar_view(masked: Tensor, step: Tensor, real_blocks: Tensor, generator) -> _View:
    """One state: a current block c uniform over the first `real_blocks` (N,); earlier blocks
    clean, later ones masked."""
    n, nb, size = masked.shape
    u = _uniform((n,), generator, masked.device)  # (N,)
    count = real_blocks.clamp(min=1)
    current = torch.minimum((u * count).long(), count - 1)  # (N,)
    blocks = torch.arange(nb, device=masked.device)[None, :]  # (1, nb)
    is_current = (blocks == current[:, None]).unsqueeze(-1)  # (N, nb, 1)
    later = (blocks > current[:, None]).unsqueeze(-1).expand(n, nb, size)  # (N, nb, B)
    supervised = masked & is_current  # (N, nb, B)
    step = step.gather(1, current[:, None]).expand(n, nb)  # (N, nb)
    trained = is_current.expand(n, nb, size).flatten(1)
    return _View((supervised | later).flatten(1), supervised.flatten(1), step, current, trained)


def _share_flags(supervised: Tensor, scores: Tensor, ratio: float) -> Tensor:
    """Each supervised position random with probability `ratio`. (N, L) bool."""
    return supervised & (scores < ratio)


def _exact_flags(supervised: Tensor, scores: Tensor, ratio: float) -> Tensor:
    """max(1, floor(ratio·|M|)) of a row's |M| positions (at most |M|): the smallest scores. (N, L) bool."""
    size = supervised.sum(-1)  # (N,)
    want = torch.minimum((size * ratio).long().clamp(min=1), size)  # (N,)
    rank = torch.argsort(torch.argsort(torch.where(supervised, scores, 2.0), dim=-1), dim=-1)  # (N, L)
    return supervised & (rank < want[:, None])


_RANDOM_COUNTS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {"share": _share_flags, "exact": _exact_flags}


def _randomise(noisy: Tensor, supervised: Tensor, cfg: StateConfig, generator) -> tuple[Tensor, Tensor]:
    """Replace a random_ratio share of supervised positions by random tokens. -> noisy, flags (N, L).

    "share": each supervised position independently; "exact": max(1, floor(ratio·|M|)) of a
    row's |M| positions (at most |M|), a uniform subset (the smallest uniform scores)."""
    if cfg.random_ratio == 0.0:
        return noisy, torch.zeros_like(supervised)
    scores = _uniform(tuple(noisy.shape), generator, noisy.device)  # (N, L)
    flags = _RANDOM_COUNTS[cfg.random_count](supervised, scores, cfg.random_ratio)  # (N, L)
    low, high = cfg.random_vocab
    tokens = _randint(low, high, tuple(noisy.shape), generator, noisy.device)  # (N, L)
    return torch.where(flags, tokens, noisy), flags


class Sections(NamedTuple):
    """A batch moved to section coordinates (see the module docstring); fields (N, L) but head_mask (N, P)."""

    head_mask: Tensor  # (N, P) bool, the prompt's whole blocks
    x0: Tensor  # (N, L) the tail, then response positions 0 .. L - shift - 1
    reveal_step: Tensor  # (N, L) the tail 0, then the response's reveal steps
    tail: Tensor  # (N, L) bool
    shift: Tensor  # (N,) int64


def tail_lengths(prompt_mask: Tensor, block_size: int, absolute: bool) -> Tensor:
    """(N,) prompt tokens in the block the response starts in: P mod B with absolute blocks, else 0."""
    n_prompt = prompt_mask.long().sum(-1)
    return n_prompt % block_size if absolute else torch.zeros_like(n_prompt)


def to_sections(prompt_ids: Tensor, prompt_mask: Tensor, x0: Tensor, reveal_step: Tensor, shift: Tensor) -> Sections:
    """Move each row's last `shift` prompt tokens to the front of its response columns.

    The last `shift` response columns fall off; under absolute blocks they are padding
    the sampler never decodes, and anything else there is refused (the data was not
    decoded with absolute blocks).
    """
    n, p = prompt_ids.shape
    length = x0.shape[1]
    cols = torch.arange(length, device=x0.device)[None, :] - shift[:, None]  # (N, L) response position
    dropped = torch.arange(length, device=x0.device)[None, :] >= length - shift[:, None]  # (N, L)
    if bool(((reveal_step >= 0) & dropped).any()):
        row = int(((reveal_step >= 0) & dropped).any(-1).nonzero()[0, 0])
        raise UserError(
            f"trajectory row {row} has response tokens in its last {int(shift[row])} columns, which a decoder with "
            "blocks at absolute positions leaves as padding: the data was not collected with this family's block "
            "alignment (collect it again with the current t3d-collect)"
        )
    full = torch.cat([prompt_ids.long(), x0.long()], dim=1)  # (N, P + L)
    tail = cols < 0
    ids = full.gather(1, p + cols)  # (N, L)
    reveal = torch.where(tail, 0, reveal_step.long().gather(1, cols.clamp(min=0)))
    head_mask = prompt_mask.bool() & (torch.arange(p, device=x0.device)[None, :] < p - shift[:, None])
    return Sections(head_mask, ids, reveal, tail, shift)


def response_to_sections(values: Tensor, shift: Tensor) -> Tensor:
    """A per-response-position tensor (N, L, ...) in section coordinates (zeros on the tail columns)."""
    length = values.shape[1]
    cols = torch.arange(length, device=values.device)[None, :] - shift.to(values.device)[:, None]  # (N, L)
    index = cols.clamp(min=0).view(*cols.shape, *([1] * (values.dim() - 2))).expand_as(values)
    moved = values.gather(1, index)
    keep = (cols >= 0).view(*cols.shape, *([1] * (values.dim() - 2)))
    return torch.where(keep, moved, torch.zeros((), dtype=values.dtype, device=values.device))


def _real_blocks(padding: Tensor, shape: tuple[int, int, int], every_block: bool) -> Tensor:
    """(N,) blocks up to the last one holding a decoded token (all of them with `every_block`)."""
    n, nb, _ = shape
    if every_block:
        return torch.full((n,), nb, dtype=torch.long, device=padding.device)
    holds = (~padding).reshape(shape).any(dim=-1)  # (N, nb)
    ranks = torch.arange(1, nb + 1, device=padding.device)
    return torch.where(holds, ranks, 0).max(dim=-1).values


_SHOWN: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "eos": lambda targets, padding, pad_id: targets,
    "pad": lambda targets, padding, pad_id: torch.where(padding, pad_id, targets),
}
"""What the input shows where the response is not masked, by `padding_shows`: (N, L) targets, padding -> (N, L)."""


def build_states(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    x0: Tensor,
    reveal_step: Tensor,
    cfg: StateConfig,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> TrainingStates:
    """Training states for a batch of trajectories, ready for one forward pass.

    prompt_ids, prompt_mask: (N, P) int / bool, left padded; x0: (N, L) response ids
    (pad after EOS); reveal_step: (N, L) int (-1 on padding); L a multiple of
    cfg.block_size. `dtype`: of the attention bias (the model's dtype). Draws, in
    order: block states, current block (semi_ar), random flags, random tokens.
    """
    if cfg.pad_columns:
        x0 = torch.nn.functional.pad(x0, (0, cfg.pad_columns), value=cfg.pad_id)
        reveal_step = torch.nn.functional.pad(reveal_step, (0, cfg.pad_columns), value=-1)
    n, length = x0.shape
    if length % cfg.block_size:
        raise ValueError(f"response length {length} is not a multiple of block_size {cfg.block_size}")
    shape = (n, length // cfg.block_size, cfg.block_size)
    shift = tail_lengths(prompt_mask, cfg.block_size, cfg.absolute_blocks)  # (N,)
    sec = to_sections(prompt_ids, prompt_mask, x0, reveal_step, shift)
    padding = sec.reveal_step < 0  # (N, L)
    targets = response_targets(sec.x0, sec.reveal_step, cfg.eos_id)  # (N, L)
    reveal = torch.where(sec.tail, -1, effective_reveal_step(sec.reveal_step, cfg.block_size))  # (N, L)
    order = _ORDERS[cfg.state_order]
    masked, step, *ratio = order(reveal.reshape(shape), padding.reshape(shape), sec.tail.reshape(shape), generator)
    cut = _block_view if cfg.layout.every_block else _semi_ar_view
    view = cut(masked, step, _real_blocks(padding, shape, cfg.supervise_padding), generator)
    supervised = view.supervised if cfg.supervise_padding else view.supervised & ~padding  # (N, L)
    shown = _SHOWN[cfg.padding_shows](targets, padding, cfg.pad_id)  # (N, L)
    noisy = torch.where(view.masked, cfg.mask_id, shown)  # (N, L)
    noisy, randomized = _randomise(noisy, supervised, cfg, generator)
    path, path_weight = _path(reveal, padding, sec.tail, view, supervised, cfg, shape)
    inputs = cfg.layout.inputs(prompt_ids, sec.head_mask, shown, noisy, cfg.block_size, dtype, cfg.absolute_blocks)
    return TrainingStates(
        **inputs._asdict(), targets=targets, noisy=noisy, supervised=supervised,
        randomized=randomized, path=path, padding=padding, state_step=view.state_step,
        current_block=view.current_block, shift=shift, tail=sec.tail, path_weight=path_weight,
        mask_ratio=ratio[0] if ratio else None,
    )  # fmt: skip


def _path(reveal, padding, tail, view: _View, supervised, cfg: StateConfig, shape) -> tuple[Tensor, Tensor | None]:
    """The path window (N, L) and, for path_mode="levels", its weights (N, L).

    "steps": the supervised positions the teacher reveals in [s, s + K). "levels": every
    valid position of the trained blocks of a row with a non-empty M (the official code
    drops rows with an empty M), weighted by `paper_path_weights` with K tokens a level.
    """
    return _PATH_MODES[cfg.path_mode](reveal, padding, tail, view, supervised, cfg, shape)


def _steps_path(reveal, padding, tail, view: _View, supervised, cfg: StateConfig, shape) -> tuple[Tensor, None]:
    position_step = view.state_step.repeat_interleave(cfg.block_size, dim=1)  # (N, L)
    return path_mask(reveal, position_step, cfg.path_k_steps) & supervised, None


def _levels_path(reveal, padding, tail, view: _View, supervised, cfg: StateConfig, shape) -> tuple[Tensor, Tensor]:
    valid = ~padding & ~tail & view.trained & supervised.any(-1, keepdim=True)  # (N, L)
    weight = paper_path_weights(reveal.reshape(shape), valid.reshape(shape), cfg.path_k_steps)
    return valid, weight


_PATH_MODES: dict[str, Callable[..., tuple[Tensor, Tensor | None]]] = {"steps": _steps_path, "levels": _levels_path}

CHOICES: dict[str, tuple[str, ...]] = {
    "state_order": tuple(_ORDERS), "random_count": tuple(_RANDOM_COUNTS), "path_mode": tuple(_PATH_MODES),
    "padding_shows": tuple(_SHOWN),
}
"""The values each named setting takes: the keys of its registry (`StatesConfig` checks them)."""
