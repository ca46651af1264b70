"""Runners: how the engine gets the logits of each active slot's current block.

One class per cache mode, picked by name from `RUNNERS` (the one list of cache modes:
`cache_modes()` is what `SamplerConfig.cache` accepts); `select_runner` turns the
sampler's `cache` setting and the model's capabilities into one of them. Masks come from
the family (`attention_bias` for whole sequences, `column_blocks` and `query_bias` for the
query rows of a cached step), so a family with its own pattern needs nothing here:

- `none`: the reference path. Every step runs the whole visible sequence (for
  block-causal families only up to the furthest current block, since later blocks are
  invisible) with the LM head only on the block positions.
- `exact` (block-causal families): the prompt's full blocks are prefilled once; each
  step runs only the current block's B tokens over the cache; a finished block is
  committed with one KV-storing forward of its final tokens before the row's next
  step. Exact: a block's keys depend only on itself and earlier blocks.
- `prefix` / `dual` (Fast-dLLM, an approximation for bidirectional families): at the
  first step of a block the whole sequence runs and its keys are kept; later steps of
  that block run the block and everything after it over the cached prefix (`prefix`),
  or only the block over the cached prefix and suffix (`dual`). On a block-causal
  family both are exact.
"""

from __future__ import annotations

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.dllm.kv_cache import ForwardPlan, SlotCache


def _mask_dtype(model) -> torch.dtype:
    return model.dtype if model.dtype.is_floating_point else torch.float32


class Runner:
    """Common helpers; subclasses implement `admit` and `block_logits`."""

    selectable = True
    """Whether `--cache` may name this mode; False: only `auto` picks it."""

    def __init__(self, engine) -> None:
        self.model = engine.model
        self.dtype = _mask_dtype(engine.model)
        self.source = engine.model.source_columns(engine.layout.width, engine.device)  # (T,)

    def admit(self, engine, slots: list[int]) -> None:
        """New rows were placed in `slots`."""

    def block_logits(self, engine, active: torch.Tensor, live: list[int], sel: torch.Tensor | None) -> torch.Tensor:
        """(R, m, V) float32 logits of each active slot's current block at its positions `sel` (R, m) (None: all B)."""
        raise NotImplementedError

    def visible_width(self, engine, live: list[int]) -> int:
        """Columns any active block can see: up to the furthest block end for block-causal families."""
        if not self.model.family.block_causal:
            return engine.layout.width
        return int(engine.host_block_columns(live)[:, -1].max()) + 1

    def full_forward(
        self, engine, active: torch.Tensor, live: list[int], sel: torch.Tensor | None, cache: SlotCache | None = None
    ) -> torch.Tensor:
        """Run the visible sequence of the active slots; logits (R, m, V) at their block positions `sel`.

        With `cache`, every column's keys are written to it. The network keeps the
        union of the rows' block columns (mapped through the family's alignment); the
        LM head runs on each row's own m positions only.
        """
        width = self.visible_width(engine, live)
        real = engine.real[active, :width]  # (R, W)
        bias = self.model.family.attention_bias(real, engine.layout.prompt_len, engine.layout.block, self.dtype)
        cols = engine.host_block_columns(live)  # (R, B)
        union = np.unique(cols)  # (K,)
        keep = torch.as_tensor(union, device=engine.device)
        if cache is not None:
            every = torch.arange(width, device=engine.device)[None, :].expand(len(live), -1)  # (R, W)
            cache.plan = ForwardPlan(slots=_slots_arg(engine, active, live), columns=every, width=width)
        index = torch.as_tensor(np.searchsorted(union, cols), device=engine.device)  # (R, B) into keep
        if sel is not None:
            index = index.gather(1, sel)  # (R, m)
        raw = self.model.raw_logits_at(
            engine.ids[active, :width], bias, engine.pos[active, :width], self.source[keep], cache, rows_keep=index
        )  # (R, m, V)
        return raw.float()


def _slots_arg(engine, active: torch.Tensor, live: list[int]) -> torch.Tensor | None:
    """None when the forward's batch is every slot in order (the cache then reads views, not copies)."""
    return None if len(live) == engine.num_slots and live == list(range(engine.num_slots)) else active


class Uncached(Runner):
    """The whole visible sequence every step (the reference every cache is measured against)."""

    def block_logits(self, engine, active, live, sel):
        return self.full_forward(engine, active, live, sel)


class CachedRunner(Runner):
    """Shared by the cached modes: the slot cache and the masks of partial forwards."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        if not bool((self.source == torch.arange(len(self.source), device=self.source.device)).all()):
            raise UserError(
                f"family {self.model.family.name!r} shifts its logits (Dream-style); a KV-cached step cannot see "
                "the previous block's last position: use cache 'none'"
            )
        num_layers = self.model.net.config.num_hidden_layers
        self.cache = SlotCache(num_layers, engine.num_slots, engine.layout.width)
        self.key_block = torch.zeros_like(engine.pos)  # (S, T) block of every column, for block-causal masks
        self.block_causal = self.model.family.block_causal

    def admit(self, engine, slots):
        if slots and self.block_causal:
            index = torch.tensor(slots, device=engine.device)
            lay = engine.layout
            self.key_block[index] = self.model.family.column_blocks(engine.real[index], lay.prompt_len, lay.block)

    def partial_forward(
        self, engine, slots: torch.Tensor, live: list[int], cols: torch.Tensor, width: int, logits: bool,
        head: int | None = None, sel: torch.Tensor | None = None,
    ):  # fmt: skip
        """Run tokens at `cols` (R, q) of `slots` over cached columns [0, width).

        Returns logits (R, m, V) of queries `sel` (R, m) among the first `head` (all q when
        None; sel None: all of those), or None when `logits` is False (no LM-head row then).
        """
        rows = slots[:, None]
        key_block = self.key_block[slots, :width] if self.block_causal else None
        bias = self.model.family.query_bias(engine.real[slots, :width], cols, key_block, self.dtype)  # (R, 1, q, W)
        self.cache.plan = ForwardPlan(slots=_slots_arg(engine, slots, live), columns=cols, width=width)
        ids, pos = engine.ids[rows, cols], engine.pos[rows, cols]  # (R, q)
        if not logits:  # a prefill or commit: its keys are all anyone reads
            self.model.store_keys(ids, bias, pos, self.cache)
            return None
        keep = torch.arange(head or cols.shape[1], device=engine.device)
        return self.model.raw_logits_at(ids, bias, pos, keep, self.cache, rows_keep=sel).float()


class ExactBlockCache(CachedRunner):
    """Exact KV cache for block-causal families (prefill, block steps, one commit per finished block)."""

    selectable = False  # `auto` picks it for block-causal families; naming it is refused as before

    def __init__(self, engine) -> None:
        super().__init__(engine)
        if not self.block_causal:
            raise UserError(f"the exact block cache needs a block-causal family, not {self.model.family.name!r}")
        self.committed = np.full(engine.num_slots, -1)  # host: last decoded block whose keys are final

    def admit(self, engine, slots):
        super().admit(engine, slots)
        if not slots:
            return
        self.committed[slots] = -1
        ends = engine.layout.prompt_len - engine.host_shift[slots]  # first decoded block's column per slot
        width = int(ends.max())
        if width:
            index = torch.tensor(slots, device=engine.device)
            cols = torch.arange(width, device=engine.device)[None, :].expand(len(slots), -1)  # (R, W)
            self.partial_forward(engine, index, slots, cols, width, logits=False)

    def block_logits(self, engine, active, live, sel):
        self._commit(engine, live)
        cols = engine.block_columns(active)  # (R, B)
        return self.partial_forward(engine, active, live, cols, self.visible_width(engine, live), logits=True, sel=sel)

    def _commit(self, engine, live: list[int]) -> None:
        """One KV-storing forward of the final tokens of each block finished since the slot's last step."""
        stale = [s for s in live if engine.host_block[s] - 1 > self.committed[s]]
        if not stale:
            return
        index = torch.tensor(stale, device=engine.device)
        cols = engine.block_columns(index) - engine.layout.block  # (R, B) the previous block
        width = int(engine.host_block_columns(stale)[:, 0].max())  # its end = the current block's start
        self.partial_forward(engine, index, stale, cols, width, logits=False)
        self.committed[stale] = engine.host_block[stale] - 1


class ApproximateCache(CachedRunner):
    """Fast-dLLM prefix (`dual=False`) or dual cache, refreshed by a full forward at each block's first step."""

    dual = False

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.refreshed = np.full(engine.num_slots, -1)  # host: block at whose first step the slot's cache was filled

    def admit(self, engine, slots):
        super().admit(engine, slots)
        self.refreshed[slots] = -1

    def block_logits(self, engine, active, live, sel):
        fresh = [r for r, s in enumerate(live) if self.refreshed[s] != engine.host_block[s]]
        cached = [r for r, s in enumerate(live) if self.refreshed[s] == engine.host_block[s]]
        parts = {}
        if fresh:
            slots = [live[r] for r in fresh]
            parts["fresh"] = self.full_forward(engine, active[fresh], slots, None if sel is None else sel[fresh], self.cache)
            self.refreshed[slots] = engine.host_block[slots]
        if cached:
            parts["cached"] = self._cached_step(engine, active[cached], [live[r] for r in cached], None if sel is None else sel[cached])
        if len(parts) == 1:
            return next(iter(parts.values()))
        out = torch.empty((len(live),) + parts["fresh"].shape[1:], dtype=torch.float32, device=engine.device)
        out[fresh], out[cached] = parts["fresh"], parts["cached"]
        return out

    def _cached_step(self, engine, slots: torch.Tensor, live: list[int], sel: torch.Tensor | None) -> torch.Tensor:
        """Block (and, for the prefix cache, everything after it) over the cached columns."""
        lay = engine.layout
        width = self.visible_width(engine, live)
        cols = engine.block_columns(slots)  # (R, B)
        if not self.dual:  # the block and the suffix; rows whose suffix is shorter repeat their last column
            starts = engine.host_block_columns(live)[:, 0]
            span = width - int(starts.min())
            cols = (cols[:, :1] + torch.arange(span, device=engine.device)[None, :]).clamp(max=width - 1)  # (R, span)
        return self.partial_forward(engine, slots, live, cols, width, logits=True, head=lay.block, sel=sel)  # LM head on the block only


class DualCache(ApproximateCache):
    dual = True


RUNNERS: dict[str, type[Runner]] = {
    "none": Uncached,
    "exact": ExactBlockCache,
    "prefix": ApproximateCache,
    "dual": DualCache,
}


AUTO = "auto"
"""The cache mode that lets the model's capabilities choose (see `select_runner`)."""


def cache_modes() -> tuple[str, ...]:
    """What `SamplerConfig.cache` accepts: `auto`, then every runner a user may name."""
    return (AUTO, *(name for name, runner in RUNNERS.items() if runner.selectable))


def select_runner(engine, mode: str) -> Runner:
    """`auto`: the exact cache for block-causal families whose network takes a cache, else `none`."""
    model = engine.model
    if mode == AUTO:
        mode = "exact" if model.family.block_causal and model.cache_argument else "none"
    if mode != "none" and not model.cache_argument:
        raise UserError(f"cache {mode!r} needs a network whose forward takes a KV cache; {type(model.net).__name__} does not")
    return RUNNERS[mode](engine)
