"""Trajectory shards -> micro-batches: a deterministic, resumable, streaming torch dataset.

The dataset is read only through `t3d.storage_schemas`. At the start the trainer
verifies the manifest and the shard checksums, applies the user's filter and the
length limits, and keeps a small index in memory: (shard, zarr_index, prompt length)
per kept row. The rows come from the contract's `RowStream`, which owns their order and
the position: epoch e is a permutation that depends only on (seed, e) (shards shuffled,
rows shuffled within groups of `shuffle_shards` shards, at most that many shards held,
so a dataset larger than memory works); worker r of w takes every w-th row, cut to whole
micro-batches. The position is the number of rows a worker has taken, so resuming means
starting at a number, and the same rows come in the same order whatever the batch size:
batch 4 x 1 and batch 1 x 4 see the same rows.

Each row also gets a seed from (seed, epoch, row) that fixes its training state, so
the states do not depend on batching or on the number of workers either. A batch carries
the stored arrays the objective names (`Objective.arrays`), read by name through the
contract, so a new stored array needs no edit here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.trainer.config import DataConfig

if TYPE_CHECKING:  # polars and zarr (through storage_schemas) load when a dataset opens: Batch and row_seeds import without them
    import polars as pl

    from t3d.storage_schemas import Dataset, RowStream, TakenRows

_ROW_COLUMNS = ("prompt_ids", "response_ids", "reveal_step")


@dataclass
class Batch:
    """One micro-batch of trajectories. N rows, P prompt columns, L response positions."""

    prompt_ids: torch.Tensor  # (N, P) int64, left padded with pad_id
    prompt_mask: torch.Tensor  # (N, P) bool, False on padding
    x0: torch.Tensor  # (N, L) int64, the teacher's final response
    reveal_step: torch.Tensor  # (N, L) int64, -1 on padding after EOS
    row_seed: torch.Tensor  # (N,) int64, fixes each row's training state
    row_id: torch.Tensor  # (N, 2) int64, (shard number, zarr_index): which row this is
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    """The stored arrays the loader was asked for, by `storage_schemas.ARRAYS` name: (N, ...) each,
    floats as float32, integers as int64 (e.g. topk_logprobs / topk_ids (N, L, k), states (N, S, L))."""

    def __len__(self) -> int:
        return self.x0.shape[0]

    @property
    def num_tokens(self) -> int:
        """Real prompt tokens plus response positions (what a forward pass reads once)."""
        return int(self.prompt_mask.sum()) + self.x0.numel()

    @property
    def topk_logprobs(self) -> torch.Tensor | None:
        """(N, L, k) float32, the teacher's top-k log-probs at reveal (None unless asked for)."""
        return self.arrays.get("topk_logprobs")

    @property
    def topk_ids(self) -> torch.Tensor | None:
        """(N, L, k) int64, their ids."""
        return self.arrays.get("topk_ids")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (SplitMix64 finaliser), vectorised; uint64 in and out."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_seeds(seed: int, epoch: int, rows: np.ndarray) -> np.ndarray:
    """(N,) int64 seeds, a function of (seed, epoch, row ordinal) only, in [0, 2**62)."""
    base = _splitmix64(np.array([seed * 1_000_003 + epoch], dtype=np.uint64))
    mixed = _splitmix64(base ^ _splitmix64(rows.astype(np.uint64)))
    return (mixed >> np.uint64(2)).astype(np.int64)


# ---- opening, verifying, indexing --------------------------------------------------------


def open_dataset(cfg: DataConfig, log=print) -> tuple[Dataset, list[str]]:
    """Open and verify the dataset; returns it and the names of the shards skipped as bad."""
    from t3d.storage_schemas import Dataset

    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise UserError(f"data directory not found: {path}")
    if not path.is_dir():
        raise UserError(f"data path is not a directory: {path}")
    if not any(path.iterdir()):
        raise UserError(f"data directory is empty: {path} (run t3d-collect first)")
    dataset = Dataset.open(path)
    bad: list[str] = []
    if cfg.verify:
        bad = dataset.verify(skip_bad=cfg.skip_bad_shards)
        for shard in bad:
            log(f"warning: skipping bad shard {shard} of {path}: its checksum does not match the manifest "
                "(--skip-bad-shards)")
    if not dataset.shards:
        raise UserError(f"no readable shards in {path}")
    return dataset, bad


def _filter_expr(text: str) -> pl.Expr:
    import polars as pl

    try:
        return pl.sql_expr(text)
    except Exception as err:
        raise UserError(f"cannot parse --filter {text!r}: {str(err).splitlines()[0]}") from None


def build_index(dataset: Dataset, cfg: DataConfig) -> pl.DataFrame:
    """(shard, zarr_index, prompt_len, width, block_size) of every kept row, sorted by shard and row."""
    import polars as pl

    lf = dataset.scan()
    if cfg.filter:
        lf = lf.filter(_filter_expr(cfg.filter))
    lf = lf.with_columns(
        prompt_len=pl.col("prompt_ids").list.len().cast(pl.Int32),
        width=pl.col("response_ids").list.len().cast(pl.Int32),
    )
    if cfg.max_prompt_len:
        lf = lf.filter(pl.col("prompt_len") <= cfg.max_prompt_len)
    if cfg.max_response_len:
        lf = lf.filter(pl.col("response_length") <= cfg.max_response_len)
    columns = ("shard", "zarr_index", "prompt_len", "width", "block_size")
    try:
        index = lf.select(columns).sort("shard", "zarr_index").collect()
    except pl.exceptions.PolarsError as err:
        what = f"--filter {cfg.filter!r}" if cfg.filter else "the dataset"
        raise UserError(f"cannot apply {what} to {cfg.path}: {str(err).splitlines()[0]}") from None
    if index.height == 0:
        filtered = cfg.filter or cfg.max_prompt_len or cfg.max_response_len
        raise UserError(f"no rows in {cfg.path}" + (" after filtering" if filtered else ""))
    widths = sorted(index["width"].unique().to_list())
    if len(widths) > 1:
        example = f"array_length(response_ids) = {widths[0]}"
        raise UserError(f"{cfg.path} mixes response lengths {widths}: keep one with --filter '{example}'")
    return index


# ---- the stream of micro-batches ---------------------------------------------------------


class TrajectoryDataset(torch.utils.data.IterableDataset):
    """Micro-batches for worker `rank` of `world`, from the stream's position onwards, forever.

    Iterate it directly (or through a DataLoader with batch_size=None). `state_dict()`
    is the data position a checkpoint stores (the `RowStream`'s). `arrays`: the stored
    arrays each batch carries (`Objective.arrays`); a dataset without one is refused.
    """

    def __init__(
        self, cfg: DataConfig, *, batch_size: int, seed: int, pad_id: int, rank: int = 0, world: int = 1,
        arrays: Sequence[str] = (), fixed_states: bool = False, log=print,
    ) -> None:  # fmt: skip
        from t3d.storage_schemas import RowStream

        super().__init__()
        self.cfg, self.batch_size, self.seed, self.pad_id = cfg, batch_size, seed, pad_id
        self.fixed_states = fixed_states  # a row's state seed from epoch 0 in every epoch (the official habit)
        self.rank, self.world = rank, world
        self.dataset, self.bad_shards = open_dataset(cfg, log)
        self.index = build_index(self.dataset, cfg)
        self.stream: RowStream = RowStream(
            self.dataset, self.index["shard"].to_numpy(), self.index["zarr_index"].to_numpy(), seed=seed,
            columns=_ROW_COLUMNS, arrays=arrays, group_shards=cfg.shuffle_shards, rank=rank, world=world,
            whole=batch_size,
        )  # fmt: skip
        self.batches_per_epoch = self.stream.rows_per_pass // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{cfg.path} has {len(self.index)} rows after filtering, fewer than one micro-batch per "
                f"worker ({batch_size} x {world} workers)"
            )
        self._check_stored(arrays)

    # -- description --------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return len(self.index)

    @property
    def num_shards(self) -> int:
        return len(self.stream.shard_names)

    @property
    def mean_prompt_len(self) -> float:
        return float(self.index["prompt_len"].mean())

    @property
    def manifest(self) -> Any:
        return self.dataset.manifest

    @property
    def block_sizes(self) -> list[int]:
        """Distinct sampler block sizes of the kept rows (the teacher's decoding blocks)."""
        return sorted(self.index["block_size"].unique().to_list())

    @property
    def response_length(self) -> int:
        """L, the same for every row (checked by `build_index`)."""
        return int(self.index["width"][0])

    # -- position -----------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Micro-batches this worker has taken."""
        return self.stream.position // self.batch_size

    @property
    def epochs_seen(self) -> float:
        """Micro-batches taken, in epochs (1.5 = half-way through the second pass)."""
        return self.stream.epochs_seen

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        from t3d.storage_schemas import DatasetError

        if "rows_taken" not in state:  # a checkpoint from before the RowStream counted micro-batches
            state = {**state, "rows_taken": int(state["position"]) * self.batch_size}
        try:
            self.stream.load_state_dict(state)
        except DatasetError as err:
            raise UserError(str(err)) from None

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        """The micro-batch at the current position; advances the position by one."""
        return self._batch(self.stream.take(self.batch_size))

    def load_rows(self, rows: np.ndarray, epoch: int) -> Batch:
        """Assemble the rows with these ordinals (index positions) into a padded batch."""
        return self._batch(self.stream.read(rows, epoch))

    def _batch(self, taken: TakenRows) -> Batch:
        frame, width = taken.columns, self.response_length
        prompts = [np.asarray(ids, dtype=np.int64) for ids in frame["prompt_ids"].to_list()]
        prompt_ids, prompt_mask = _left_pad(prompts, self.pad_id)
        return Batch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            x0=torch.from_numpy(frame["response_ids"].list.to_array(width).to_numpy().astype(np.int64)),  # (N, L)
            reveal_step=torch.from_numpy(frame["reveal_step"].list.to_array(width).to_numpy().astype(np.int64)),
            row_seed=torch.from_numpy(self._row_seeds(taken)),
            row_id=torch.from_numpy(np.stack([taken.shard_no, taken.zarr_index], axis=1).astype(np.int64)),
            arrays={name: _widened(values) for name, values in taken.arrays.items()},
        )

    def _row_seeds(self, taken: TakenRows) -> np.ndarray:
        """(N,) each row's state seed, from the epoch it was taken in (epoch 0 with fixed_states)."""
        epochs = np.zeros_like(taken.epoch) if self.fixed_states else taken.epoch
        seeds = np.empty(len(taken), dtype=np.int64)
        for epoch in np.unique(epochs):
            seeds[epochs == epoch] = row_seeds(self.seed, int(epoch), taken.ordinal[epochs == epoch])
        return seeds

    def _check_stored(self, arrays: Sequence[str]) -> None:
        from t3d.storage_schemas import ARRAYS

        for name in arrays:
            if name not in ARRAYS:
                raise ValueError(f"unknown stored array {name!r}; the contract has {sorted(ARRAYS)}")
            missing = [s for s in self.stream.shard_names if name not in self.dataset.stored_arrays(s)]
            if missing:
                raise UserError(f"{self.cfg.path}: shard {missing[0]} stores no {name} ({ARRAYS[name].about}), "
                                "which the objective (--loss) needs")  # fmt: skip


def _widened(values: np.ndarray) -> torch.Tensor:
    """A stored array as the trainer takes it: integers as int64, floats as float32."""
    if values.dtype.kind in "iu":
        values = values.astype(np.int64)
    elif values.dtype.kind == "f":
        values = values.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(values))


def _left_pad(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> (N, P) ids and (N, P) bool mask, right-aligned (left padding)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = s
            mask[i, width - len(s) :] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)
