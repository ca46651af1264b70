"""Block size and steps per block checked against the checkpoint, before its weights load.

A block-causal family such as SDAR is trained at one block size (its config.json says
which; the family knows the key, `Family.trained_block_size`). Decoding with another
block size feeds the network attention layouts it never saw: it runs, and quietly
decodes worse. So a decode block other than the trained one is refused with the reason,
unless the user forces it. A training block (t3d-distill) must be a multiple of it: the
official T3D recipe trains blocks of 8 over SDAR's blocks of 4, whose boundaries stay
boundaries.

Steps per block that do not divide the block: the sampler can run them (the remainder goes
to the first steps, as SDAR's and LLaDA's own decoders do: 3 steps over 4 tokens reveal
2, 1, 1), but the commands label a setting by B / steps tokens per step and store
`steps_per_block` as the schedule, so an uneven one is refused with what it would do.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from t3d.dllm.errors import UserError
from t3d.dllm.loading import check_checkpoint_dir, read_json, resolve_family, resolve_model_path
from t3d.dllm.reveal import get_strategy, static_schedule

FORCE_FLAG = "--force-block-size"


def trained_block_size(model: str | Path, family: str | None = None) -> int | None:
    """The block size `model` was trained with (read from its config.json only), or None when its family has none."""
    path = resolve_model_path(model)
    check_checkpoint_dir(path)
    raw = read_json(path / "config.json")
    return resolve_family(raw, family, path).trained_block_size(raw)


def check_decode_block(model: str | Path, block_size: int, *, family: str | None = None, force: bool = False) -> None:
    """Decoding `model` with blocks of `block_size` must match its trained block size, unless forced."""
    if force:
        return
    trained = trained_block_size(model, family)
    if trained is None or block_size == trained:
        return
    raise UserError(
        f"--block-size {block_size}: {model} was trained with blocks of {trained} (block_size in its config.json) and "
        f"decodes other block sizes out of distribution; pass --block-size {trained}, or {FORCE_FLAG} to use {block_size}"
    )


def check_training_block(model: str | Path, block_size: int, *, family: str | None = None, force: bool = False) -> None:
    """Training blocks (t3d-distill --block-size) must be whole multiples of the model's trained block, unless forced."""
    if force:
        return
    trained = trained_block_size(model, family)
    if trained is None or block_size % trained == 0:
        return
    raise UserError(
        f"--block-size {block_size}: {model} was trained with blocks of {trained} (block_size in its config.json); a "
        f"training block must be a multiple of it ({trained}, {2 * trained}, ...), or pass {FORCE_FLAG}"
    )


def check_steps_per_block(block_size: int, steps: Iterable[int], strategy: str = "static") -> None:
    """Each steps-per-block value of a scheduled strategy must divide the block: one line saying what it would do."""
    if not get_strategy(strategy).scheduled:
        return
    for count in steps:
        if 1 <= count <= block_size and block_size % count:  # out of range: SamplerConfig says so
            reveals = ", ".join(map(str, static_schedule(block_size, count)))
            divisors = ", ".join(str(d) for d in range(1, block_size + 1) if block_size % d == 0)
            raise UserError(
                f"--steps-per-block {count} does not divide the block size {block_size}: its steps would reveal "
                f"{reveals} tokens (uneven); pass one of {divisors}"
            )
