"""Work units: one unit is one shard, with a deterministic name and contents.

Unit i holds prompts [i * shard_size, (i + 1) * shard_size) of the prepared prompt list
and is written as shard i. Each row's seed derives from (global seed, prompt index,
rollout) alone, so a row's values do not depend on which actor ran it, how many actors
there were, or whether the unit was retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from t3d.pipeline.prompts import EncodedPrompt
from t3d.storage_schemas import shard_name


class UnitFailedError(RuntimeError):
    """A unit failed on every try, or no worker is left to run it (one line, names the unit)."""


@dataclass(frozen=True)
class WorkUnit:
    """One shard's worth of prompts, sent to an actor as is."""

    index: int  # shard index
    prompts: tuple[EncodedPrompt, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def prompt_indices(self) -> list[int]:
        return [p.index for p in self.prompts]


def plan_units(prompts: list[EncodedPrompt], shard_size: int) -> list[WorkUnit]:
    """Cut the prompt list into consecutive units of `shard_size` prompts (the last may be shorter)."""
    return [
        WorkUnit(index=i, prompts=tuple(prompts[start : start + shard_size]))
        for i, start in enumerate(range(0, len(prompts), shard_size))
    ]


def row_seed(seed: int, prompt_index: int, rollout: int) -> int:
    """A 63-bit seed for one (prompt, rollout) row, well mixed by numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, prompt_index, rollout]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def unit_rows(unit: WorkUnit, rollouts: int, seed: int) -> list[tuple[EncodedPrompt, int, int]]:
    """(prompt, rollout, seed) of every row of a unit, in shard order: by prompt, then rollout."""
    return [(p, r, row_seed(seed, p.index, r)) for p in unit.prompts for r in range(rollouts)]
