"""The contract's resumable reader: a seeded order of rows, a position a reader saves and resumes from.

And a stored array declared in the schema alone (here, in the test) is written by the
one shard builder and reaches the trainer's batches: no writer or reader edit.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from t3d.storage_schemas import (
    ARRAYS,
    ArraySpec,
    Dataset,
    DatasetError,
    Manifest,
    RowStream,
    epoch_order,
    shard_arrays,
    write_shard,
)


def stream(path, **kw) -> RowStream:
    dataset = Dataset.open(path)
    index = dataset.scan().select("shard", "zarr_index").sort("shard", "zarr_index").collect()
    kw.setdefault("columns", ("sample_id",))
    kw.setdefault("arrays", ("topk_ids",))
    return RowStream(dataset, index["shard"].to_numpy(), index["zarr_index"].to_numpy(), seed=3, **kw)


def names(taken) -> list[str]:
    return taken.columns["sample_id"].to_list()


def test_epoch_order_is_a_seeded_permutation_that_keeps_shard_groups():
    shard_no = np.repeat(np.arange(6), 5)  # 6 shards of 5 rows
    a = epoch_order(shard_no, seed=1, epoch=0, group_shards=2)
    assert sorted(a) == list(range(30))
    assert np.array_equal(a, epoch_order(shard_no, seed=1, epoch=0, group_shards=2))
    assert not np.array_equal(a, epoch_order(shard_no, seed=1, epoch=1, group_shards=2))
    assert not np.array_equal(a, epoch_order(shard_no, seed=2, epoch=0, group_shards=2))
    groups = shard_no[a].reshape(3, 10)  # each run of 10 rows comes from exactly 2 shards
    assert all(len(set(g)) == 2 for g in groups)


def test_a_resumed_reader_gives_exactly_the_rows_an_uninterrupted_one_gives_next(dataset_dir):
    """11 rows: read 14 (into the second pass, in uneven takes), save, resume in a new reader."""
    whole = stream(dataset_dir)
    first = [whole.take(n) for n in (3, 5, 6)]
    assert whole.position == 14 and whole.epochs_seen == 14 / 11
    state = whole.state_dict()
    expected = whole.take(5)

    resumed = stream(dataset_dir)
    resumed.load_state_dict(state)
    got = resumed.take(5)
    assert names(got) == names(expected)
    assert np.array_equal(got.epoch, [1] * 5) and np.array_equal(got.ordinal, expected.ordinal)
    assert np.array_equal(got.arrays["topk_ids"], expected.arrays["topk_ids"])
    assert names(stream(dataset_dir).take(5)) != names(got)  # a reader that ignored the position
    # how rows are taken does not matter: one take of 14 = the takes of 3, 5 and 6
    assert names(stream(dataset_dir).take(14)) == [n for t in first for n in names(t)]
    assert sorted(names(first[0]) + names(first[1]) + names(first[2])[:3]) == sorted(set(Dataset.open(dataset_dir)
        .scan().collect()["sample_id"]))  # fmt: skip


def test_arrays_come_aligned_with_their_rows(dataset_dir):
    """The fixture's zarr_index is reversed: arrays read by row number would be misaligned."""
    dataset = Dataset.open(dataset_dir)
    taken = stream(dataset_dir, columns=("sample_id", "zarr_index"), arrays=("topk_ids", "topk_logprobs"), group_shards=2).take(11)
    for i, (shard, z) in enumerate(zip(np.asarray(stream(dataset_dir).shard_names)[taken.shard_no], taken.zarr_index)):
        one = dataset.arrays(str(shard), [int(z)])
        assert np.array_equal(taken.arrays["topk_ids"][i], one["topk_ids"][0])
        assert np.array_equal(taken.arrays["topk_logprobs"][i], one["topk_logprobs"][0])
    assert taken.columns["zarr_index"].to_list() == taken.zarr_index.tolist()


def test_workers_share_a_pass_disjointly_and_hold_one_group(dataset_dir):
    shares = [stream(dataset_dir, rank=r, world=2, whole=2) for r in range(2)]
    taken = [names(s.take(s.rows_per_pass)) for s in shares]
    assert [len(t) for t in taken] == [4, 4] and not set(taken[0]) & set(taken[1])  # 11 // 2 // 2 * 2 each
    assert all(s.shards_held <= 1 for s in shares)


def test_a_position_over_another_index_is_refused(dataset_dir):
    state = stream(dataset_dir).state_dict()
    dataset = Dataset.open(dataset_dir)
    index = dataset.scan().select("shard", "zarr_index").sort("shard", "zarr_index").collect()[:10]
    fewer = RowStream(dataset, index["shard"].to_numpy(), index["zarr_index"].to_numpy(), seed=3)
    with pytest.raises(DatasetError, match="would not continue the same data order"):
        fewer.load_state_dict(state)


def test_an_array_declared_in_the_schema_alone_is_written_and_reaches_the_trainer(monkeypatch, make_shard, tmp_path):
    """The cost of a new stored array on the storage side: its `ArraySpec`. The one shard
    builder writes it from the sampler output's attribute of that name, and the trainer's
    batches carry it when an objective names it; no writer, reader or trainer edit."""
    from t3d.trainer.config import DataConfig
    from t3d.trainer.data import TrajectoryDataset

    spec = ArraySpec(name="entropy", dtype=np.dtype(np.float16), dims=("row", "position"), required=False,
                     about="a test-only per-position entropy")  # fmt: skip
    monkeypatch.setitem(ARRAYS, "entropy", spec)
    manifest, written = Manifest(collect_config={}, teacher={"name": "builtin"}), {}
    for index in range(2):
        columns, arrays = make_shard(rows=5 + index, seed=index)
        entropy = np.random.default_rng(index).random(columns["response_ids"].shape, dtype=np.float32)  # (N, L)
        decoded = SimpleNamespace(**arrays, entropy=entropy)  # the sampler's output, with its new field
        manifest = manifest.with_shard(write_shard(tmp_path, index, columns, shard_arrays(decoded)))
        written |= {(index, z): row.astype(np.float16) for z, row in enumerate(entropy)}  # arrays are by zarr_index
    manifest.save(tmp_path)

    loader = TrajectoryDataset(DataConfig(path=str(tmp_path)), batch_size=11, seed=0, pad_id=0, arrays=("entropy",))
    batch = loader.next_batch()
    got = batch.arrays["entropy"]  # (N, L) float32
    assert got.dtype.is_floating_point and got.shape == batch.x0.shape
    for i, (shard_no, z) in enumerate(batch.row_id.tolist()):
        assert np.array_equal(got[i].numpy(), written[(shard_no, z)].astype(np.float32))
