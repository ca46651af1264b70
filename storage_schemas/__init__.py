"""The trajectory data contract between `t3d-collect` (writer) and `t3d-distill` (reader).

A dataset directory holds `manifest.json` and shards `shard-NNNNN.parquet` +
`shard-NNNNN.zarr/`; see `schema` for the columns and arrays. Writers build a shard's
contents with `shard_columns` / `shard_arrays` and commit it with `write_shard`; readers
go through `Dataset` (rows, columns and arrays by shard) and `RowStream` (a seeded order of
rows with a position a reader saves and resumes from). Nothing else in t3d opens a shard.
"""

from t3d.storage_schemas.columns import Decoded, sample_id, shard_arrays, shard_columns
from t3d.storage_schemas.errors import DatasetError
from t3d.storage_schemas.manifest import FORMAT, MANIFEST_NAME, Manifest, ShardInfo
from t3d.storage_schemas.reader import Dataset
from t3d.storage_schemas.schema import (
    ARRAYS,
    COLUMNS,
    OPTIONAL_COLUMNS,
    SAMPLER_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    VERSION_KEY,
    ArraySpec,
    build_table,
    parquet_path,
    shard_index,
    shard_name,
    validate_arrays,
    validate_table,
    zarr_path,
)
from t3d.storage_schemas.stream import RowStream, TakenRows, epoch_order
from t3d.storage_schemas.writer import Reconciled, check_shard_files, reconcile, write_shard

__all__ = [
    "ARRAYS",
    "COLUMNS",
    "FORMAT",
    "MANIFEST_NAME",
    "OPTIONAL_COLUMNS",
    "SAMPLER_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "VERSION_KEY",
    "ArraySpec",
    "Dataset",
    "DatasetError",
    "Decoded",
    "Manifest",
    "Reconciled",
    "RowStream",
    "ShardInfo",
    "TakenRows",
    "build_table",
    "check_shard_files",
    "epoch_order",
    "parquet_path",
    "reconcile",
    "sample_id",
    "shard_index",
    "shard_arrays",
    "shard_columns",
    "shard_name",
    "validate_arrays",
    "validate_table",
    "write_shard",
    "zarr_path",
]
