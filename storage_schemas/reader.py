"""Read a committed dataset: the manifest's shards only, with version and checksum checks.

The data stays readable without t3d (`polars.scan_parquet(dir + "/*.parquet")`,
`zarr.open_group(dir + "/shard-00000.zarr")`); this class adds the guarantees: only
committed shards, the right schema version, optional checksum verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import zarr

from t3d.storage_schemas.errors import DatasetError, first_line
from t3d.storage_schemas.files import sha256_file, sha256_tree
from t3d.storage_schemas.manifest import Manifest, ShardInfo
from t3d.storage_schemas.schema import ARRAYS, SCHEMA, parquet_path, zarr_path

_PATH_COLUMN = "__t3d_source_path"


class Dataset:
    """A trajectory dataset opened for reading; build with `Dataset.open`."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self._path = path
        self._manifest = manifest
        self._excluded: set[str] = set()
        self._groups: dict[str, zarr.Group] = {}

    @classmethod
    def open(cls, dataset_dir: str | Path, verify: bool = False) -> Dataset:
        """Open a dataset; DatasetError if the manifest is missing, corrupt, of another
        schema version, or lists a shard whose files are gone. `verify` also checks checksums."""
        path = Path(dataset_dir)
        manifest = Manifest.load(path)
        for name in sorted(manifest.shards):
            for part in (parquet_path(path, name), zarr_path(path, name)):
                if not part.exists():
                    raise DatasetError(f"shard {name} is listed in {path / 'manifest.json'} but {part} is missing")
        dataset = cls(path, manifest)
        if verify:
            dataset.verify()
        return dataset

    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def shards(self) -> list[str]:
        """Names of the readable shards, sorted (excludes shards `verify(skip_bad=True)` dropped)."""
        return [name for name in sorted(self._manifest.shards) if name not in self._excluded]

    @property
    def num_rows(self) -> int:
        return sum(self._manifest.shards[name].rows for name in self.shards)

    def scan(self) -> pl.LazyFrame:
        """All rows of the readable shards, plus a `shard` column (e.g. "shard-00012").

        Pair `shard` with `zarr_index` to fetch a row's arrays with `arrays`.
        """
        if not self.shards:
            empty = pl.from_arrow(SCHEMA.empty_table())
            return empty.lazy().with_columns(pl.lit(None, dtype=pl.String).alias("shard"))
        paths = [str(parquet_path(self._path, name)) for name in self.shards]
        frame = pl.scan_parquet(paths, glob=False, include_file_paths=_PATH_COLUMN)
        shard = pl.col(_PATH_COLUMN).str.extract(r"(shard-\d+)\.parquet$").alias("shard")
        return frame.with_columns(shard).drop(_PATH_COLUMN)

    def rows(self, shard: str, zarr_indices: Sequence[int] | np.ndarray, columns: Sequence[str]) -> pl.DataFrame:
        """`zarr_index` and `columns` of rows `zarr_indices` of one shard, sorted by zarr_index.

        Reads that shard's Parquet part alone, so a reader holding a few shards at a time
        never scans the dataset. DatasetError if the file is unreadable or a row is missing
        (the shard changed since the caller indexed it).
        """
        self._check_readable(shard)
        wanted = np.unique(np.asarray(zarr_indices, dtype=np.int64))  # (n,)
        where = f"shard {shard} of {self._path}"
        try:
            frame = (
                pl.scan_parquet(parquet_path(self._path, shard))
                .select("zarr_index", *(c for c in columns if c != "zarr_index"))
                .filter(pl.col("zarr_index").is_in(wanted.tolist()))
                .sort("zarr_index")
                .collect()
            )
        except (OSError, pl.exceptions.PolarsError) as err:
            raise DatasetError(f"cannot read {where}: {first_line(err)}") from None
        if frame.height != len(wanted):
            raise DatasetError(f"{where} changed since it was indexed: {len(wanted) - frame.height} row(s) are missing")
        return frame

    def arrays(
        self,
        shard: str,
        zarr_indices: Sequence[int] | np.ndarray,
        *,
        names: Sequence[str] | None = None,
        upcast: bool = True,
    ) -> dict[str, np.ndarray]:
        """The Zarr arrays of rows `zarr_indices` of one shard, in the order given.

        Returns the stored arrays (or only `names`, to skip reading large dense states):
        `topk_logprobs` (n, L, k) float32 when `upcast` (exact: every float16 is a
        float32), else the stored float16; `topk_ids` (n, L, k) int32; `states`
        (n, S, L) int32 if the shard has them. A name the shard lacks is left out.
        """
        group = self._group(shard)
        stored = sorted(group.array_keys())
        rows = int(group.attrs["rows"])
        index = np.asarray(zarr_indices, dtype=np.int64).reshape(-1)  # (n,)
        if index.size and (index.min() < 0 or index.max() >= rows):
            raise DatasetError(f"shard {shard} of {self._path}: zarr_index out of range 0..{rows - 1}")
        unique, inverse = np.unique(index, return_inverse=True)  # zarr reads each chunk once
        out = {}
        for name in stored if names is None else [n for n in names if n in stored]:
            array = group[name]
            values = array.oindex[unique] if unique.size else np.empty((0, *array.shape[1:]), array.dtype)
            values = values[inverse]
            out[name] = values.astype(np.float32) if upcast and values.dtype == np.float16 else values
        return out

    def verify(self, skip_bad: bool = False) -> list[str]:
        """Check every readable shard's checksums against the manifest.

        Raises DatasetError naming the first bad shard; with `skip_bad`, returns the bad
        shards' names instead and excludes them from `shards`, `scan` and `arrays`.
        """
        bad = []
        for name in self.shards:
            problem = self._checksum_problem(name)
            if problem is None:
                continue
            if not skip_bad:
                raise DatasetError(problem)
            bad.append(name)
        self._excluded.update(bad)
        for name in bad:
            self._groups.pop(name, None)
        return bad

    def bytes_per_response_token(self) -> dict[str, float]:
        """On-disk bytes per response token (sum of `response_length`), per stored part:
        `parquet` and each Zarr array. Empty when the readable shards hold no tokens."""
        infos = [self._manifest.shards[name] for name in self.shards]
        tokens = sum(info.response_tokens for info in infos)
        if tokens == 0:
            return {}
        totals: dict[str, int] = {}
        for info in infos:
            for part, size in info.bytes.items():
                totals[part] = totals.get(part, 0) + size
        return {part: size / tokens for part, size in sorted(totals.items())}

    def stored_arrays(self, shard: str) -> list[str]:
        """Names of the Zarr arrays a readable shard holds, in `ARRAYS` order (from the manifest: no file is opened)."""
        return [name for name in ARRAYS if name in self.shard_info(shard).bytes]

    def shard_info(self, shard: str) -> ShardInfo:
        """The manifest entry of a readable shard."""
        self._check_readable(shard)
        return self._manifest.shards[shard]

    def _checksum_problem(self, name: str) -> str | None:
        info = self._manifest.shards[name]
        where = f"shard {name} of {self._path}"
        parquet, zarr_dir = parquet_path(self._path, name), zarr_path(self._path, name)
        if not (parquet.is_file() and zarr_dir.is_dir()):
            return f"{where}: files missing ({parquet.name}, {zarr_dir.name}/)"
        for part, expected, actual in (
            ("parquet", info.parquet_sha256, sha256_file(parquet)),
            ("zarr", info.zarr_sha256, sha256_tree(zarr_dir)),
        ):
            if expected != actual:
                return f"checksum mismatch in {where} ({part}): manifest {expected[:12]}, on disk {actual[:12]}"
        return None

    def _check_readable(self, shard: str) -> None:
        if shard in self._excluded:
            raise DatasetError(f"shard {shard} of {self._path} failed verification and is excluded")
        if shard not in self._manifest.shards:
            raise DatasetError(f"shard {shard} is not in the manifest of {self._path}")

    def _group(self, shard: str) -> zarr.Group:
        self._check_readable(shard)
        if shard not in self._groups:
            try:
                self._groups[shard] = zarr.open_group(zarr_path(self._path, shard), mode="r")
            except (OSError, ValueError, KeyError) as err:
                raise DatasetError(f"shard {shard} of {self._path}: unreadable zarr: {first_line(err)}") from None
        return self._groups[shard]

    def __repr__(self) -> str:
        return f"Dataset({str(self._path)!r}, shards={len(self.shards)}, rows={self.num_rows})"
