"""A dataset's rows in a seeded order that a reader can resume: the reader a trainer needs.

A `RowStream` walks a fixed list of rows (the caller's index: which rows it keeps, after
its own filters) in passes ("epochs"). Pass e is a permutation that depends only on
(seed, e): the shards are shuffled, taken `group_shards` at a time, and the rows of each
group are shuffled together, so at most `group_shards` shards' rows (columns and arrays)
are held in memory and a dataset larger than memory streams. Worker `rank` of `world` takes every
`world`-th row of that order (disjoint, equal shares), cut to a multiple of `whole` rows
per pass, so batches of `whole` rows never straddle two passes.

The position is the number of rows this worker has taken. It is all a resume needs
(`state_dict` / `load_state_dict`), and the rows after a position do not depend on how
they were taken: `take(4)` gives the rows of four `take(1)`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from t3d.storage_schemas.errors import DatasetError
from t3d.storage_schemas.reader import Dataset

_STREAM_SALT = 0x7E3D  # part of every pass's seed, so the order differs from other uses of the seed


def epoch_order(shard_no: np.ndarray, seed: int, epoch: int, group_shards: int) -> np.ndarray:
    """Row ordinals of pass `epoch`: shuffled shards, rows shuffled within groups of shards.

    shard_no: (N,) shard number of each row, sorted. Returns a permutation of range(N).
    """
    rng = np.random.default_rng([seed, epoch, _STREAM_SALT])
    num_shards = int(shard_no.max()) + 1
    bounds = np.searchsorted(shard_no, np.arange(num_shards + 1))  # rows of shard s: bounds[s]:bounds[s+1]
    shard_order = rng.permutation(num_shards)
    parts = []
    for g in range(0, num_shards, group_shards):
        rows = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in shard_order[g : g + group_shards]])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts)


@dataclass(frozen=True)
class TakenRows:
    """Rows read from a `RowStream`, in the order they were asked for. n rows."""

    ordinal: np.ndarray  # (n,) int64, each row's place in the stream's index
    epoch: np.ndarray  # (n,) int64, the pass each row was taken in (0 for `read`)
    shard_no: np.ndarray  # (n,) int64, shard number (the index's shards numbered 0.. in name order)
    zarr_index: np.ndarray  # (n,) int64, the row within its shard
    columns: pl.DataFrame  # the stream's Parquet columns, one row each
    arrays: dict[str, np.ndarray]  # the stream's Zarr arrays, (n, ...) each, float16 upcast to float32

    def __len__(self) -> int:
        return len(self.ordinal)


@dataclass(frozen=True)
class _HeldShard:
    """One shard's kept rows in memory, in zarr_index order. m rows."""

    zarr_index: np.ndarray  # (m,) sorted
    columns: pl.DataFrame  # the stream's columns
    arrays: dict[str, np.ndarray]  # the stream's arrays as stored (float16 stays float16 until taken)


def _upcast(values: np.ndarray) -> np.ndarray:
    """float16 -> float32 (exact), as `Dataset.arrays` hands them out; other dtypes unchanged."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


class RowStream:
    """Rows of `dataset` for worker `rank` of `world`, from `position` onwards, pass after pass.

    shard, zarr_index: (N,) the kept rows, sorted by shard name then zarr_index; the
    order and every row's ordinal refer to this index. columns / arrays: what `take` and
    `read` return of each row (Parquet columns, Zarr array names of `schema.ARRAYS`).
    """

    def __init__(
        self, dataset: Dataset, shard: Sequence[str] | np.ndarray, zarr_index: Sequence[int] | np.ndarray, *,
        seed: int, columns: Sequence[str] = (), arrays: Sequence[str] = (), group_shards: int = 1,
        rank: int = 0, world: int = 1, whole: int = 1,
    ) -> None:  # fmt: skip
        if not 0 <= rank < world or group_shards < 1 or whole < 1:
            raise ValueError(f"need 0 <= rank < world, group_shards >= 1, whole >= 1; got {rank}, {world}, "
                             f"{group_shards}, {whole}")  # fmt: skip
        names, shard_no = np.unique(np.asarray(shard, dtype=str), return_inverse=True)
        self.shard_names: list[str] = names.tolist()  # shard number -> name
        self.shard_no = shard_no.astype(np.int64).reshape(-1)  # (N,)
        self.zarr_index = np.asarray(zarr_index, dtype=np.int64)  # (N,)
        if len(self.shard_no) == 0 or np.any(np.diff(self.shard_no) < 0):
            raise ValueError("a RowStream needs a non-empty index sorted by shard")
        self.dataset, self.seed, self.group_shards = dataset, seed, group_shards
        self.rank, self.world, self.whole = rank, world, whole
        self.columns, self.arrays = tuple(columns), tuple(arrays)
        self.rows_per_pass = len(self.shard_no) // world // whole * whole
        """Rows this worker takes per pass (0: too few rows for one `whole` per worker)."""
        self._position = 0
        self._held: OrderedDict[int, _HeldShard] = OrderedDict()
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def num_rows(self) -> int:
        """N, the rows of the index (every worker's share together, before the cut to `whole`)."""
        return len(self.shard_no)

    @property
    def position(self) -> int:
        """Rows this worker has taken since the start of pass 0."""
        return self._position

    @property
    def epochs_seen(self) -> float:
        """The position in passes (1.5 = half-way through the second pass)."""
        return self._position / self.rows_per_pass

    @property
    def shards_held(self) -> int:
        """Shards whose columns are in memory now (at most `group_shards`)."""
        return len(self._held)

    def state_dict(self) -> dict[str, int]:
        """Where the stream is, and what order that position belongs to."""
        return {"rows_taken": self._position, "seed": self.seed, "rows": self.num_rows, "world": self.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; DatasetError if the index changed (another order)."""
        if int(state.get("rows", self.num_rows)) != self.num_rows:
            raise DatasetError(
                f"the dataset now has {self.num_rows} rows after filtering, the position was saved over "
                f"{state['rows']}: resuming would not continue the same data order"
            )
        self._position = int(state["rows_taken"])

    def take(self, n: int) -> TakenRows:
        """The next n >= 1 rows of this worker's share; advances the position by n."""
        if self.rows_per_pass == 0:
            raise ValueError(f"{self.num_rows} rows give no worker of {self.world} a whole {self.whole} rows per pass")
        epoch, offset = np.divmod(self._position + np.arange(n, dtype=np.int64), self.rows_per_pass)  # (n,) each
        ordinal = np.concatenate([self._share(int(e))[offset[epoch == e]] for e in np.unique(epoch)])
        self._position += n
        return self.read(ordinal, epoch)

    def read(self, ordinal: np.ndarray, epoch: np.ndarray | int = 0) -> TakenRows:
        """The rows with these ordinals (places in the index), in that order; the position stays."""
        ordinal = np.asarray(ordinal, dtype=np.int64).reshape(-1)  # (n,)
        shard_no, zarr = self.shard_no[ordinal], self.zarr_index[ordinal]
        frames, parts, where = [], {name: [] for name in self.arrays}, []
        for s in np.unique(shard_no):
            mine = np.nonzero(shard_no == s)[0]
            held = self._shard(int(s))
            at = np.searchsorted(held.zarr_index, zarr[mine])  # (m,) places among the held rows
            frames.append(held.columns[at])
            for name in self.arrays:
                parts[name].append(_upcast(held.arrays[name][at]))
            where.append(mine)
        back = np.argsort(np.concatenate(where))  # grouped by shard -> the order asked for
        return TakenRows(
            ordinal=ordinal, epoch=np.broadcast_to(np.asarray(epoch, dtype=np.int64), ordinal.shape).copy(),
            shard_no=shard_no, zarr_index=zarr, columns=pl.concat(frames)[back],
            arrays={name: self._stack(name, values)[back] for name, values in parts.items()},
        )  # fmt: skip

    def _share(self, epoch: int) -> np.ndarray:
        """(rows_per_pass,) this worker's ordinals in pass `epoch`."""
        if self._order is None or self._order[0] != epoch:
            order = epoch_order(self.shard_no, self.seed, epoch, self.group_shards)
            usable = self.rows_per_pass * self.world
            self._order = (epoch, order[:usable][self.rank :: self.world])
        return self._order[1]

    def _shard(self, s: int) -> _HeldShard:
        """Shard number s's kept rows (columns and arrays), read once and held while its group is in use.

        The arrays are read whole too: a batch's few rows would otherwise decompress a chunk of
        `schema.ROWS_PER_CHUNK` rows per array each time (20x slower for the top-k).
        """
        if s in self._held:
            self._held.move_to_end(s)
            return self._held[s]
        name, kept = self.shard_names[s], self.zarr_index[self.shard_no == s]
        frame = self.dataset.rows(name, kept, self.columns)
        held_zarr = frame["zarr_index"].to_numpy()  # (m,) sorted
        arrays = self.dataset.arrays(name, held_zarr, names=self.arrays, upcast=False)
        missing = [a for a in self.arrays if a not in arrays]
        if missing:
            raise DatasetError(f"shard {name} of {self.dataset.path} stores no {missing[0]}")
        self._held[s] = _HeldShard(zarr_index=held_zarr, columns=frame, arrays=arrays)
        while len(self._held) > self.group_shards:
            self._held.popitem(last=False)
        return self._held[s]

    def _stack(self, name: str, values: list[np.ndarray]) -> np.ndarray:
        shapes = {v.shape[1:] for v in values}
        if len(shapes) > 1:
            raise DatasetError(f"{self.dataset.path}: shards store {name} in different shapes {sorted(shapes)}")
        return np.concatenate(values)

    def __repr__(self) -> str:
        where = f"rank={self.rank}/{self.world}, position={self._position}"
        return f"RowStream({self.dataset!r}, rows={self.num_rows}, {where})"

