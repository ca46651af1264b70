"""The rollout engine: decoding slots on the device, refilled from a queue of rows.

`sample` (t3d.dllm.sampling) builds one `Engine` per call. The engine holds S slots
(S = the batch); each slot decodes one row at a time. Every step is one batched
forward (through a runner, see `t3d.dllm.runners`) and then, on the device: proposal,
reveal choice, bookkeeping, EOS and block checks. One small device-to-host copy per
step (done flags, blocks, steps) tells the host which slots finished; a finished slot
hands its row's results over and takes the next pending row at once (continuous
batching), so short responses do not wait for the longest one.

Column layout, shared by every slot: P = the longest prompt of the call, T = P + L.
A row with a prompt of length p is left-padded by P - p; its response occupies
columns [P, T). Block k of a row covers columns P - shift + [kB, (k+1)B), where
shift = p mod B when the family's blocks sit at absolute positions (SDAR) and 0
otherwise: the prompt's tail then shares the first block with masks (never revealed)
and the last `shift` response columns are padding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from t3d.dllm import noise, vocab
from t3d.dllm.model import DiffusionLM, take_rows
from t3d.dllm.reveal import entropy, get_confidence, get_strategy


@dataclass(frozen=True)
class Layout:
    """Sizes shared by every slot of one call."""

    prompt_len: int  # P: columns before the response (left padding included)
    length: int  # L: response columns
    block: int  # B
    absolute: bool  # blocks at absolute positions (the prompt's tail shares the first block)

    @property
    def width(self) -> int:
        return self.prompt_len + self.length

    @property
    def num_blocks(self) -> int:
        return self.length // self.block

    def shift(self, prompt_len: int) -> int:
        """Prompt tokens in a row's first decoded block (p mod B under absolute blocks, else 0)."""
        return prompt_len % self.block if self.absolute else 0


class Engine:
    """Slots, their device state, the row queue and the per-row results."""

    def __init__(self, model: DiffusionLM, prompts: list[list[int]], cfg, seeds: list[int], num_slots: int) -> None:
        self.model, self.cfg, self.prompts, self.seeds = model, cfg, prompts, [int(s) for s in seeds]
        self.layout = Layout(max(len(p) for p in prompts), cfg.max_new_tokens, cfg.block_size, model.family.absolute_blocks)
        self.device = model.device
        self.k = min(cfg.logits_top_k, model.vocab_size)
        self.eos = torch.tensor(model.eos_ids, device=self.device)
        self._init_slots(num_slots)
        self._init_results(len(prompts))
        self.pending = deque(range(len(prompts)))
        self.nfe = 0
        self._probs: torch.Tensor | None = None  # flat softmax buffer of S * B * V floats, reused every step

    # --- state -----------------------------------------------------------------------------

    def _init_slots(self, s: int) -> None:
        lay, dev = self.layout, self.device
        t, length = lay.width, lay.length
        self.num_slots = s
        self.slot_row = [-1] * s  # host: row held by each slot, -1 = free
        self.host_block = np.zeros(s, dtype=np.int64)
        self.host_shift = np.zeros(s, dtype=np.int64)
        self.host_steps = np.zeros(s, dtype=np.int64)
        self.host_masked = np.zeros(s, dtype=np.int64)  # masks left in each slot's current block
        self.ids = torch.full((s, t), self.model.pad_id, dtype=torch.long, device=dev)  # (S, T)
        self.real = torch.zeros((s, t), dtype=torch.bool, device=dev)  # (S, T) False on padding
        self.pos = torch.zeros((s, t), dtype=torch.long, device=dev)  # (S, T) from the row's first token
        self.shift = torch.zeros(s, dtype=torch.long, device=dev)
        self.seed = torch.zeros(s, dtype=torch.long, device=dev)
        self.block = torch.zeros(s, dtype=torch.long, device=dev)
        self.step = torch.zeros(s, dtype=torch.long, device=dev)
        self.step_in_block = torch.zeros(s, dtype=torch.long, device=dev)
        self.done = torch.ones(s, dtype=torch.bool, device=dev)
        # Per response column, plus one scratch column (index L) that prompt slots of a block write to.
        self.reveal = torch.full((s, length + 1), -1, dtype=torch.long, device=dev)  # (S, L + 1)
        self.confidence = torch.zeros((s, length + 1), dtype=torch.float32, device=dev)
        self.topk_logprobs = torch.zeros((s, length + 1, self.k), dtype=torch.float32, device=dev)
        self.topk_ids = torch.zeros((s, length + 1, self.k), dtype=torch.long, device=dev)
        self.states = torch.zeros((s, 0, length), dtype=torch.long, device=dev) if self.cfg.record_states else None

    def _init_results(self, n: int) -> None:
        length, k, dev = self.layout.length, self.k, self.device
        self.out_tokens = torch.zeros((n, length), dtype=torch.long, device=dev)
        self.out_reveal = torch.full((n, length), -1, dtype=torch.long, device=dev)
        self.out_confidence = torch.zeros((n, length), dtype=torch.float32, device=dev)
        self.out_topk_logprobs = torch.zeros((n, length, k), dtype=torch.float32, device=dev)
        self.out_topk_ids = torch.zeros((n, length, k), dtype=torch.long, device=dev)
        self.out_steps = np.zeros(n, dtype=np.int32)
        self.out_states: list[torch.Tensor | None] = [None] * n

    @property
    def live(self) -> list[int]:
        """Slots holding a row that is still decoding (host view, exact after each sync)."""
        return [s for s, row in enumerate(self.slot_row) if row >= 0]

    def block_columns(self, active: torch.Tensor) -> torch.Tensor:
        """(R, B) sequence columns of each active slot's current block (device)."""
        lay = self.layout
        start = lay.prompt_len - self.shift[active] + self.block[active] * lay.block  # (R,)
        return start[:, None] + torch.arange(lay.block, device=self.device)[None, :]

    def host_block_columns(self, slots: list[int]) -> np.ndarray:
        """(R, B) the same on the host, from the block indices of the last sync."""
        lay = self.layout
        start = lay.prompt_len - self.host_shift[slots] + self.host_block[slots] * lay.block
        return start[:, None] + np.arange(lay.block)[None, :]

    # --- rows in and out -----------------------------------------------------------------------

    def admit(self) -> list[int]:
        """Move pending rows into free slots; returns the slots filled."""
        free = [s for s, row in enumerate(self.slot_row) if row < 0]
        filled = []
        while free and self.pending:
            slot, row = free.pop(0), self.pending.popleft()
            self._place(slot, row)
            filled.append(slot)
        return filled

    def _place(self, slot: int, row: int) -> None:
        lay, prompt = self.layout, self.prompts[row]
        p, pad, shift = len(prompt), lay.prompt_len - len(prompt), lay.shift(len(prompt))
        live = lay.length - shift  # decodable response columns
        ids = [self.model.pad_id] * pad + list(prompt) + [self.model.mask_id] * live + [self.model.pad_id] * shift
        real = [False] * pad + [True] * (p + live) + [False] * shift
        self.ids[slot] = torch.tensor(ids, dtype=torch.long)
        self.real[slot] = torch.tensor(real)
        self.pos[slot] = (torch.arange(lay.width) - pad).clamp(min=0)
        self.reveal[slot] = -1
        self.reveal[slot, lay.length] = 0  # scratch column: never masked
        for tensor in (self.shift, self.seed, self.block, self.step, self.step_in_block, self.done):
            tensor[slot] = 0
        self.shift[slot], self.seed[slot] = shift, self.seeds[row]
        self.slot_row[slot], self.host_block[slot], self.host_shift[slot], self.host_steps[slot] = row, 0, shift, 0
        self.host_masked[slot] = lay.block - shift  # the prompt's tail fills the rest of the first block

    def retire(self, slots: list[int], steps: list[int]) -> None:
        """Hand finished slots' results to their rows and free the slots."""
        rows = [self.slot_row[s] for s in slots]
        lay = self.layout
        src = torch.tensor(slots, device=self.device)
        dst = torch.tensor(rows, device=self.device)
        self.out_tokens[dst] = self.ids[src, lay.prompt_len :]
        self.out_reveal[dst] = self.reveal[src, : lay.length]
        self.out_confidence[dst] = self.confidence[src, : lay.length]
        self.out_topk_logprobs[dst] = self.topk_logprobs[src, : lay.length]
        self.out_topk_ids[dst] = self.topk_ids[src, : lay.length]
        for slot, row, n in zip(slots, rows, steps):
            self.out_steps[row] = n
            if self.states is not None:
                self.out_states[row] = self.states[slot, :n].clone()
            self.slot_row[slot] = -1

    # --- one step ----------------------------------------------------------------------------

    def selection(self, active: torch.Tensor, live: list[int]) -> torch.Tensor | None:
        """(R, m) positions in each active slot's block that are still masked, m = the most any slot has.

        Only these get the LM head, the softmax and a proposal; rows with fewer masks are
        filled up with revealed positions (whose results are never used). None: the
        whole block (every slot has all B masked, as at a block's first step).
        """
        m = int(self.host_masked[live].max())
        if m >= self.layout.block:
            return None
        _, masked = self.response_columns(active, self.block_columns(active))  # (R, B)
        return (~masked).to(torch.int8).argsort(dim=1, stable=True)[:, :m]  # masked positions first, distinct

    def response_columns(self, active: torch.Tensor, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence columns (R, q) of the active slots -> their response columns (prompt columns -> the
        scratch column L) and whether each is still masked, both (R, q)."""
        lay = self.layout
        resp = seq - lay.prompt_len
        cols = torch.where(resp >= 0, resp, lay.length)
        return cols, (resp >= 0) & (self.reveal[active[:, None].expand_as(cols), cols] < 0)

    def decode(self, active: torch.Tensor, logits: torch.Tensor, sel: torch.Tensor | None = None) -> torch.Tensor:
        """Propose, choose, reveal and advance the active slots, given their logits (R, m, V) at block positions
        `sel` (R, m) (None: all B positions, m = B).

        Returns (4, R) int64 on the device: done flag, block, steps taken, masks left in the current block.
        """
        cfg, lay = self.cfg, self.layout
        logits[..., self.model.mask_id] = float("-inf")  # the mask token is never a proposal
        block = self.block_columns(active)  # (R, B)
        seq = block if sel is None else block.gather(1, sel)  # (R, m)
        cols, masked = self.response_columns(active, seq)  # (R, m)
        rows = active[:, None].expand_as(cols)
        probs = self._softmax(logits)  # (R, m, V) untempered, one fused pass: what the model believes
        step = self.step[active]  # (R,)
        proposal = noise.propose(logits, probs, cfg, self.seed[active], step, cols)  # (R, m)
        confidence = probs.gather(-1, proposal[..., None]).squeeze(-1)  # (R, m)
        if self.states is not None:
            self.states[active, step] = self.ids[active, lay.prompt_len :]
        chosen = self._choose(probs, confidence, masked, active)  # (R, m)
        self.ids[rows, seq] = torch.where(chosen, proposal, self.ids[rows, seq])
        self.reveal[rows, cols] = torch.where(chosen, step[:, None], self.reveal[rows, cols])
        self.confidence[rows, cols] = torch.where(chosen, confidence, self.confidence[rows, cols])
        if self.k:
            self._record_topk(probs, chosen, rows, cols)
        return self._advance(active, block)

    def _choose(self, probs: torch.Tensor, probability: torch.Tensor, masked: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The strategy's reveal choice (R, m), ranking by the configured confidence measure."""
        strategy, measure = get_strategy(self.cfg.strategy), get_confidence(self.cfg.confidence)
        extra = {"entropy": entropy(probs)} if getattr(strategy, "uses_entropy", False) else {}  # (R, m) nats
        if extra and getattr(measure, "negative_entropy", False):
            score = -extra["entropy"]  # the same tensor the measure would compute
        else:
            score = measure.score(probs, probability)  # (R, m)
        return strategy.choose(score, masked, self.step_in_block[active], self.cfg, **extra)

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax into one buffer kept across steps: a fresh (R, m, V) tensor per step costs more than the
        softmax itself on the CPU (page faults on ~20 MB at batch 8, SDAR's vocabulary)."""
        r, m, v = logits.shape
        need = r * m * v
        if self._probs is None or self._probs.numel() < need:
            self._probs = torch.empty(self.num_slots * self.layout.block * v, dtype=torch.float32, device=logits.device)
        return torch.softmax(logits, dim=-1, out=self._probs[:need].view(r, m, v))

    def _record_topk(self, probs: torch.Tensor, chosen: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Top-k log-probs of the revealed positions only: at most `max_reveals` of the m per row."""
        n = min(get_strategy(self.cfg.strategy).max_reveals(self.cfg), chosen.shape[1])
        if n < chosen.shape[1]:  # the chosen positions first (a stable sort of a (R, m) bool: cheap)
            pick = chosen.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :n]  # (R, n)
            probs = take_rows(probs, pick)  # (R, n, V)
            chosen, rows, cols = chosen.gather(1, pick), rows[:, :n], cols.gather(1, pick)
        values, ids = vocab.topk(probs, self.k)  # (R, n, k)
        keep = chosen[..., None]
        self.topk_logprobs[rows, cols] = torch.where(keep, values.log(), self.topk_logprobs[rows, cols])
        self.topk_ids[rows, cols] = torch.where(keep, ids, self.topk_ids[rows, cols])

    def _advance(self, active: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """Count the step, move rows with a complete block on, stop rows that are finished.

        block: (R, B) sequence columns of each row's current block (all of them, not only the selection).
        """
        lay = self.layout
        steps = self.step[active] + 1
        self.step[active] = steps
        _, still_masked = self.response_columns(active, block)  # (R, B)
        response = self.ids[active, lay.prompt_len :]  # (R, L)
        revealed = self.reveal[active, : lay.length] >= 0  # (R, L)
        finished = eos_complete(response, revealed, self.eos) & self.cfg.stop_at_eos  # (R,)
        moved = ~still_masked.any(dim=1) & ~finished  # (R,) block complete
        index = self.block[active] + moved.long()
        self.block[active] = index
        self.step_in_block[active] = torch.where(moved, 0, self.step_in_block[active] + 1)
        done = finished | (index >= lay.num_blocks)
        self.done[active] = done
        left = torch.where(moved, lay.block, still_masked.sum(dim=1))  # a new block starts fully masked
        return torch.stack([done.long(), index, steps, left])  # (4, R)

    def grow_states(self, steps_so_far: int) -> None:
        """Make room for one more recorded state per slot (doubling, so amortised)."""
        if self.states is not None and self.states.shape[1] <= steps_so_far:
            s, cap, length = self.states.shape
            extra = torch.zeros((s, max(8, cap), length), dtype=self.states.dtype, device=self.states.device)
            self.states = torch.cat([self.states, extra], dim=1)


def eos_complete(response: torch.Tensor, revealed: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """(R,) True once a stop id is revealed and every position before it is revealed too."""
    hit = torch.isin(response, eos) & revealed  # (R, L)
    first = hit.float().argmax(dim=1)  # (R,) first revealed stop id (0 when there is none)
    before = torch.arange(response.shape[1], device=response.device)[None, :] < first[:, None]  # (R, L)
    return hit.any(dim=1) & (revealed | ~before).all(dim=1)


def run(engine: Engine, runner) -> None:
    """Decode every row: admit, step, sync once, retire, refill, until the queue and the slots are empty."""
    runner.admit(engine, engine.admit())
    active_key, active = None, None
    while live := engine.live:
        if live != active_key:  # the index tensor changes only when slots change
            active_key, active = live, torch.tensor(live, device=engine.device)
        engine.grow_states(int(engine.host_steps[live].max()))
        sel = engine.selection(active, live)  # (R, m) the masked positions of each block, or None: all B
        logits = runner.block_logits(engine, active, live, sel)  # (R, m, V) float32
        synced = engine.decode(active, logits, sel).cpu().numpy()  # the one host sync of the step
        engine.nfe += 1
        done, engine.host_block[live], steps = synced[0].astype(bool), synced[1], synced[2]
        engine.host_steps[live], engine.host_masked[live] = steps, synced[3]
        finished = [s for s, d in zip(live, done) if d]
        if finished:
            engine.retire(finished, [int(n) for n, d in zip(steps, done) if d])
            runner.admit(engine, engine.admit())
