"""Trajectory shards -> micro-batches: a deterministic, resumable, streaming torch dataset.

The dataset is read only through `t3d.storage_schemas`. At the start the trainer
verifies the manifest and the shard checksums, applies the user's filter and the
length limits, and keeps a small index in memory: (shard, zarr_index, prompt length)
per kept row. Everything else streams: rows are read a shard at a time and at most
`shuffle_shards` shards are held, so a dataset larger than memory works.

Order. Epoch e is a permutation that depends only on (seed, e): the shards are
shuffled, taken `shuffle_shards` at a time, and the rows of each group are shuffled
together. Worker r of w takes every w-th row of that order (disjoint, equal counts),
cut to whole micro-batches. The position is the number of micro-batches a worker has
taken, so resuming means starting at a number, and the same rows come in the same
order whatever the batch size: batch 4 x 1 and batch 1 x 4 see the same rows.

Each row also gets a seed from (seed, epoch, row) that fixes its training state, so
the states do not depend on batching or on the number of workers either.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.trainer.config import DataConfig

if TYPE_CHECKING:  # polars and zarr (through storage_schemas) load when a dataset opens: Batch and row_seeds import without them
    import polars as pl

    from t3d.storage_schemas import Dataset

_ROW_COLUMNS = ("prompt_ids", "response_ids", "reveal_step")


@dataclass
class Batch:
    """One micro-batch of trajectories. N rows, P prompt columns, L response positions, k top-k."""

    prompt_ids: torch.Tensor  # (N, P) int64, left padded with pad_id
    prompt_mask: torch.Tensor  # (N, P) bool, False on padding
    x0: torch.Tensor  # (N, L) int64, the teacher's final response
    reveal_step: torch.Tensor  # (N, L) int64, -1 on padding after EOS
    row_seed: torch.Tensor  # (N,) int64, fixes each row's training state
    row_id: torch.Tensor  # (N, 2) int64, (shard number, zarr_index): which row this is
    topk_logprobs: torch.Tensor | None = None  # (N, L, k) float32, teacher log-probs at reveal
    topk_ids: torch.Tensor | None = None  # (N, L, k) int64

    def __len__(self) -> int:
        return self.x0.shape[0]

    @property
    def num_tokens(self) -> int:
        """Real prompt tokens plus response positions (what a forward pass reads once)."""
        return int(self.prompt_mask.sum()) + self.x0.numel()


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
    """(shard, zarr_index, prompt_len, block_size, shard_no) of every kept row, sorted by shard and row.

    shard_no numbers the shards that keep rows 0..S-1 in name order.
    """
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
    return index.with_columns(shard_no=(pl.col("shard").rank("dense") - 1).cast(pl.Int64))


def epoch_order(shard_no: np.ndarray, seed: int, epoch: int, shuffle_shards: int) -> np.ndarray:
    """Row ordinals of epoch `epoch`: shuffled shards, rows shuffled within groups of shards.

    shard_no: (N,) shard number of each row, sorted. Returns a permutation of range(N).
    """
    rng = np.random.default_rng([seed, epoch, 0x7E3D])
    num_shards = int(shard_no.max()) + 1
    bounds = np.searchsorted(shard_no, np.arange(num_shards + 1))  # rows of shard s: bounds[s]:bounds[s+1]
    shard_order = rng.permutation(num_shards)
    parts = []
    for g in range(0, num_shards, shuffle_shards):
        rows = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in shard_order[g : g + shuffle_shards]])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts)


# ---- reading rows a shard at a time ------------------------------------------------------


@dataclass
class _ShardRows:
    """One shard's kept rows as flat numpy arrays, looked up by zarr_index."""

    zarr_index: np.ndarray  # (n,) sorted
    prompt_values: np.ndarray  # (sum of prompt lengths,) int64
    prompt_offsets: np.ndarray  # (n + 1,)
    response: np.ndarray  # (n, L) int64
    reveal: np.ndarray  # (n, L) int64

    def locate(self, zarr_index: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.zarr_index, zarr_index)


def _read_shard(dataset: Dataset, shard: str, zarr_index: np.ndarray) -> _ShardRows:
    """The kept rows of one shard (its Parquet part alone, not the whole dataset)."""
    frame = dataset.rows(shard, zarr_index, _ROW_COLUMNS)
    prompts = frame["prompt_ids"]
    lengths = prompts.list.len().to_numpy()
    width = len(frame["response_ids"][0])
    return _ShardRows(
        zarr_index=frame["zarr_index"].to_numpy(),
        prompt_values=prompts.explode().to_numpy().astype(np.int64),
        prompt_offsets=np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths, dtype=np.int64)]),
        response=frame["response_ids"].list.to_array(width).to_numpy().astype(np.int64),  # (n, L)
        reveal=frame["reveal_step"].list.to_array(width).to_numpy().astype(np.int64),  # (n, L)
    )


class TrajectoryDataset(torch.utils.data.IterableDataset):
    """Micro-batches for worker `rank` of `world`, from position `self.position` onwards, forever.

    Iterate it directly (or through a DataLoader with batch_size=None). `state_dict()`
    is the data position a checkpoint stores.
    """

    def __init__(
        self, cfg: DataConfig, *, batch_size: int, seed: int, pad_id: int, rank: int = 0, world: int = 1,
        with_topk: bool = False, fixed_states: bool = False, log=print,
    ) -> None:  # fmt: skip
        super().__init__()
        self.cfg, self.batch_size, self.seed, self.pad_id = cfg, batch_size, seed, pad_id
        self.fixed_states = fixed_states  # a row's state seed from epoch 0 in every epoch (the official habit)
        self.rank, self.world, self.with_topk = rank, world, with_topk
        self.dataset, self.bad_shards = open_dataset(cfg, log)
        self.index = build_index(self.dataset, cfg)
        self._shard_no = self.index["shard_no"].to_numpy()
        self._shard_key = self.index["shard"].unique(maintain_order=True).to_list()  # shard number -> value
        self._zarr = self.index["zarr_index"].to_numpy()
        self.batches_per_epoch = len(self.index) // world // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{cfg.path} has {len(self.index)} rows after filtering, fewer than one micro-batch per "
                f"worker ({batch_size} x {world} workers)"
            )
        if with_topk:
            self._check_topk_stored()
        self.position = 0
        self._cache: OrderedDict[int, _ShardRows] = OrderedDict()
        self._order: tuple[int, np.ndarray] | None = None

    # -- description --------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return len(self.index)

    @property
    def num_shards(self) -> int:
        return len(self._shard_key)

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

    # -- position -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "rows": self.num_rows, "world": self.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("rows", self.num_rows) != self.num_rows:
            raise UserError(
                f"the dataset now has {self.num_rows} rows after filtering, the checkpoint was trained on "
                f"{state['rows']}: resuming would not continue the same data order"
            )
        self.position = int(state["position"])

    @property
    def epochs_seen(self) -> float:
        """Micro-batches taken, in epochs (1.5 = half-way through the second pass)."""
        return self.position / self.batches_per_epoch

    @property
    def response_length(self) -> int:
        """L, the same for every row (checked by `build_index`)."""
        return int(self.index["width"][0])

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        """The micro-batch at the current position; advances the position by one."""
        epoch, step = divmod(self.position, self.batches_per_epoch)
        mine = self._worker_rows(epoch)
        rows = mine[step * self.batch_size : (step + 1) * self.batch_size]  # (N,) row ordinals
        self.position += 1
        return self.load_rows(rows, epoch)

    def _worker_rows(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = epoch_order(self._shard_no, self.seed, epoch, self.cfg.shuffle_shards)
            usable = self.batches_per_epoch * self.batch_size * self.world
            self._order = (epoch, order[:usable][self.rank :: self.world])
        return self._order[1]

    def load_rows(self, rows: np.ndarray, epoch: int) -> Batch:
        """Assemble the rows with these ordinals (index positions) into a padded batch."""
        shard_no, zarr = self._shard_no[rows], self._zarr[rows]
        prompts, response, reveal = [], [], []
        for s, z in zip(shard_no, zarr):
            part = self._shard(int(s))
            i = int(part.locate(np.array([z]))[0])
            prompts.append(part.prompt_values[part.prompt_offsets[i] : part.prompt_offsets[i + 1]])
            response.append(part.response[i])
            reveal.append(part.reveal[i])
        prompt_ids, prompt_mask = _left_pad(prompts, self.pad_id)
        batch = Batch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            x0=torch.from_numpy(np.stack(response)),  # (N, L)
            reveal_step=torch.from_numpy(np.stack(reveal)),  # (N, L)
            row_seed=torch.from_numpy(row_seeds(self.seed, 0 if self.fixed_states else epoch, rows)),
            row_id=torch.from_numpy(np.stack([shard_no, zarr], axis=1).astype(np.int64)),
        )
        if self.with_topk:
            self._attach_topk(batch, shard_no, zarr)
        return batch

    def _shard(self, s: int) -> _ShardRows:
        """Rows of shard number s, keeping at most `shuffle_shards` shards in memory."""
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        rows = _read_shard(self.dataset, self._shard_key[s], self._zarr[self._shard_no == s])
        self._cache[s] = rows
        while len(self._cache) > self.cfg.shuffle_shards:
            self._cache.popitem(last=False)
        return rows

    def _check_topk_stored(self) -> None:
        missing = [name for name in self._shard_key if "topk_logprobs" not in self.dataset.stored_arrays(name)]
        if missing:
            raise UserError(
                f"{self.cfg.path}: shard {missing[0]} stores no teacher top-k log-probs (collected with "
                "logits_top_k=0), which --loss fkl needs"
            )

    def _attach_topk(self, batch: Batch, shard_no: np.ndarray, zarr: np.ndarray) -> None:
        """The teacher's stored top-k at reveal, read per shard from the Zarr arrays."""
        lp = ids = None
        for s in np.unique(shard_no):
            where = np.nonzero(shard_no == s)[0]
            arrays = self.dataset.arrays(self._shard_key[int(s)], zarr[where])
            if lp is None:
                lp = np.zeros((len(zarr), *arrays["topk_logprobs"].shape[1:]), np.float32)
                ids = np.zeros((len(zarr), *arrays["topk_ids"].shape[1:]), np.int64)
            lp[where], ids[where] = arrays["topk_logprobs"], arrays["topk_ids"]
        batch.topk_logprobs, batch.topk_ids = torch.from_numpy(lp), torch.from_numpy(ids)


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
