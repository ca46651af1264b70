"""The trajectory stream: deterministic order, disjoint workers, filters, resumable position."""

import numpy as np
import polars as pl
import pytest

from t3d.dllm.errors import UserError
from t3d.storage_schemas import Dataset, DatasetError
from t3d.trainer.config import DataConfig
from t3d.trainer.data import TrajectoryDataset, row_seeds


def loader(path, **kw):
    data_kw = {k: kw.pop(k) for k in list(kw) if k in ("filter", "max_prompt_len", "max_response_len", "shuffle_shards", "verify")}
    kw.setdefault("batch_size", 4)
    return TrajectoryDataset(DataConfig(path=str(path), **data_kw), seed=kw.pop("seed", 0), pad_id=1, **kw)


def ids(batches):
    return [tuple(r) for b in batches for r in b.row_id.tolist()]


def test_rows_match_the_dataset(datasets):
    stream = loader(datasets["bidirectional"], batch_size=5)
    batch = stream.next_batch()
    frame = Dataset.open(datasets["bidirectional"]).scan().collect()
    shards = sorted(frame["shard"].unique())
    for i, (s, z) in enumerate(batch.row_id.tolist()):
        row = frame.filter((pl.col("shard") == shards[s]) & (pl.col("zarr_index") == z)).row(0, named=True)
        prompt = batch.prompt_ids[i][batch.prompt_mask[i]].tolist()
        assert prompt == row["prompt_ids"]
        assert batch.x0[i].tolist() == row["response_ids"] and batch.reveal_step[i].tolist() == row["reveal_step"]
        assert batch.prompt_mask[i, -1]  # left padded


def test_workers_read_disjoint_equal_shares(datasets):
    parts = []
    for rank in range(3):
        worker = loader(datasets["bidirectional"], rank=rank, world=3)
        parts.append(ids(worker.next_batch() for _ in range(worker.batches_per_epoch)))
    assert len({len(p) for p in parts}) == 1
    flat = [r for p in parts for r in p]
    assert len(flat) == len(set(flat)) == 3 * worker.batches_per_epoch * 4  # disjoint, whole batches


def test_row_order_does_not_depend_on_batch_size(datasets):
    big = loader(datasets["bidirectional"], batch_size=4)
    small = loader(datasets["bidirectional"], batch_size=1)
    b = big.next_batch()
    singles = [small.next_batch() for _ in range(4)]
    assert ids([b]) == ids(singles)
    assert b.row_seed.tolist() == [s.row_seed.item() for s in singles]


def test_position_resumes_the_same_stream(datasets):
    first = loader(datasets["bidirectional"], shuffle_shards=1)
    for _ in range(first.batches_per_epoch + 2):  # into the second epoch
        first.next_batch()
    state = first.state_dict()
    expected = ids(first.next_batch() for _ in range(3))
    again = loader(datasets["bidirectional"], shuffle_shards=1)
    again.load_state_dict(state)
    assert ids(again.next_batch() for _ in range(3)) == expected
    assert again.stream.shards_held <= 1  # streaming: at most shuffle_shards shards in memory


def test_a_checkpoint_position_from_before_the_row_stream_counts_micro_batches(datasets):
    """Checkpoints written before the RowStream stored {"position": micro-batches}: resume reads them as such."""
    first = loader(datasets["bidirectional"])
    for _ in range(3):
        first.next_batch()
    state = first.state_dict()
    assert state["rows_taken"] == 12 and first.position == 3
    old = {"position": 3, "seed": state["seed"], "rows": state["rows"], "world": state["world"]}
    again = loader(datasets["bidirectional"])
    again.load_state_dict(old)
    assert ids([again.next_batch()]) == ids([first.next_batch()])


def test_filter_and_length_limits(datasets):
    frame = Dataset.open(datasets["bidirectional"]).scan().collect()
    kept = loader(datasets["bidirectional"], filter="correct == true")
    assert kept.num_rows == frame["correct"].sum()
    short = loader(datasets["bidirectional"], max_prompt_len=3)
    assert short.num_rows == (frame["prompt_ids"].list.len() <= 3).sum()
    with pytest.raises(UserError, match="--filter"):
        loader(datasets["bidirectional"], filter="no_such_column > 1")
    with pytest.raises(UserError, match="no rows"):
        loader(datasets["bidirectional"], max_prompt_len=1)
    with pytest.raises(UserError, match="fewer than one micro-batch"):
        loader(datasets["bidirectional"], batch_size=1000)


def test_a_shard_that_loses_rows_after_indexing_stops_the_stream(dataset_copy):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    data = dataset_copy()
    stream = loader(data, verify=False)
    for parquet in data.glob("shard-*.parquet"):  # rewritten without its row 0 behind the loader's back
        table = pq.read_table(parquet)
        pq.write_table(table.filter(pc.not_equal(table["zarr_index"], 0)), parquet)
    with pytest.raises(DatasetError, match="changed since it was indexed: 1 row"):
        stream.next_batch()


def test_topk_comes_with_the_rows(datasets):
    stream = loader(datasets["bidirectional"], arrays=("topk_logprobs", "topk_ids"))
    batch = stream.next_batch()
    assert batch.topk_logprobs.shape[:2] == batch.x0.shape and batch.topk_ids.shape == batch.topk_logprobs.shape
    real = batch.reveal_step >= 0
    assert (batch.topk_logprobs[real] <= 0).all() and (batch.topk_logprobs[real][:, 0] > -20).all()


def test_row_seeds_depend_on_row_and_epoch_only():
    rows = np.arange(100)
    seeds = row_seeds(0, 0, rows)
    assert len(set(seeds.tolist())) == 100 and (seeds >= 0).all()
    assert np.array_equal(row_seeds(0, 0, rows[::-1]), seeds[::-1])
    assert not np.array_equal(row_seeds(0, 1, rows), seeds)


def test_topk_objective_needs_stored_topk(kit, teachers, tmp_path):
    from t3d.dllm import SamplerConfig

    cfg = SamplerConfig(max_new_tokens=8, block_size=4, logits_top_k=0)
    data = kit.collect(tmp_path / "no-topk", teachers["bidirectional"], prompts=8, shards=1, cfg=cfg)
    assert loader(data).next_batch().topk_ids is None
    with pytest.raises(UserError, match="top-k"):
        loader(data, arrays=("topk_logprobs", "topk_ids"))
