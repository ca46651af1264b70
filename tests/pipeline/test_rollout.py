"""One unit in this process: the shard it commits, its determinism, what the rows hold."""

import dataclasses

import numpy as np
import pytest

from t3d.dllm import load_model
from t3d.dllm.sampling import SamplerConfig
from t3d.pipeline.config import RolloutConfig, TeacherConfig
from t3d.pipeline.prompts import EncodedPrompt
from t3d.pipeline.rollout import RolloutJob, run_unit
from t3d.pipeline.units import WorkUnit, row_seed
from t3d.storage_schemas import Dataset, Manifest

PROMPTS = (
    EncodedPrompt(index=10, ids=(4, 6, 7, 5), text="w0 w1", answer="yes"),
    EncodedPrompt(index=11, ids=(4, 8, 5), text="w2", answer=None),
    EncodedPrompt(index=12, ids=(9,), text=None, answer=None),
)
UNIT = WorkUnit(index=3, prompts=PROMPTS)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_model(teacher_dir)


def job_for(out, teacher, **rollout):
    identity = teacher.identity()
    return RolloutJob(
        out_dir=str(out),
        teacher=TeacherConfig(model=identity["path"]),
        teacher_identity=identity,
        rollout=RolloutConfig(rollouts_per_prompt=2, sampler=SamplerConfig(), **rollout),
        seed=5,
    )


def read_shard(out, info):
    """Open a unit's shard through the reader: list it in a manifest first."""
    Manifest(shards={info.name: info}).save(out)
    dataset = Dataset.open(out, verify=True)
    rows = dataset.scan().collect()
    return rows, dataset.arrays(info.name, rows["zarr_index"].to_numpy(), upcast=False)


def test_unit_commits_one_shard_with_the_expected_rows(tmp_path, teacher):
    job = job_for(tmp_path, teacher)
    result = run_unit(teacher, UNIT, job)
    assert result.shard.name == "shard-00003" and result.rows == 6 and result.prompts == 3
    rows, arrays = read_shard(tmp_path, result.shard)
    assert rows["sample_id"].to_list() == ["p000010-r0", "p000010-r1", "p000011-r0", "p000011-r1", "p000012-r0", "p000012-r1"]
    assert rows["seed"].to_list() == [row_seed(5, p.index, r) for p in PROMPTS for r in range(2)]
    assert rows["prompt_ids"].to_list()[0] == [4, 6, 7, 5] and rows["prompt"].to_list()[0] == "w0 w1"
    assert rows["prompt"].to_list()[4] == teacher.tokenizer.decode([9]), "id prompts get their text from the tokenizer"
    assert rows["answer"].to_list() == ["yes", "yes", None, None, None, None]
    assert rows["teacher_fingerprint"].unique().to_list() == [teacher.fingerprint]
    assert result.response_tokens == rows["response_length"].sum()
    assert arrays["topk_ids"].shape == (6, 16, 8) and "states" not in arrays
    assert sorted(result.finish_reasons.items()) == sorted(rows["finish_reason"].value_counts().rows())


def test_a_retried_unit_writes_the_same_bytes(tmp_path, teacher):
    job = job_for(tmp_path, teacher)
    first = run_unit(teacher, UNIT, job)
    again = run_unit(teacher, UNIT, job)
    assert (first.shard.parquet_sha256, first.shard.zarr_sha256) == (again.shard.parquet_sha256, again.shard.zarr_sha256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00003.parquet", "shard-00003.zarr"], "no temporaries left"


def test_batching_does_not_change_a_row(tmp_path, teacher):
    """Rows are seeded on their own, so one big batch decodes like batches of one.

    Tokens and reveal steps are equal; probabilities may differ in the last float bit
    (other padding, other matmul shapes), which is why batch_size is part of the
    dataset key and a resume must keep it.
    """
    big = run_unit(teacher, UNIT, job_for(tmp_path / "a", teacher, batch_size=64))
    small = run_unit(teacher, UNIT, job_for(tmp_path / "b", teacher, batch_size=1))
    rows_big, arrays_big = read_shard(tmp_path / "a", big.shard)
    rows_small, arrays_small = read_shard(tmp_path / "b", small.shard)
    exact = [c for c in rows_big.columns if c != "confidence"]
    assert rows_big.select(exact).equals(rows_small.select(exact))
    np.testing.assert_allclose(np.stack(rows_big["confidence"].to_numpy()), np.stack(rows_small["confidence"].to_numpy()), atol=1e-5)
    np.testing.assert_array_equal(arrays_big["topk_ids"], arrays_small["topk_ids"])
    np.testing.assert_allclose(arrays_big["topk_logprobs"], arrays_small["topk_logprobs"], atol=1e-2)  # float16


def test_dense_states_are_stored_and_match_the_reveal_steps(tmp_path, teacher):
    job = job_for(tmp_path, teacher, record_states="dense", batch_size=4)  # two batches of different step counts
    result = run_unit(teacher, UNIT, job)
    rows, arrays = read_shard(tmp_path, result.shard)
    states = arrays["states"]  # (N, S, L)
    tokens = np.stack(rows["response_ids"].to_numpy())  # (N, L)
    reveal = np.stack(rows["reveal_step"].to_numpy())  # (N, L)
    for s in range(states.shape[1]):
        rebuilt = np.where(reveal >= s, teacher.mask_id, tokens)
        rebuilt = np.where(reveal < 0, teacher.pad_id, rebuilt)  # padding after EOS shows as pad
        np.testing.assert_array_equal(states[:, s], rebuilt)


def test_a_score_function_fills_correct(tmp_path, teacher):
    job = dataclasses.replace(job_for(tmp_path, teacher), score=lambda prompt, response: len(prompt) % 2 == 0)
    rows, _ = read_shard(tmp_path, run_unit(teacher, UNIT, job).shard)
    assert rows["correct"].to_list() == [True, True, False, False, False, False]


def test_a_worker_refuses_a_teacher_other_than_the_drivers(tmp_path, teacher):
    """A node that sees other weights under the same path must not mix them into the dataset."""
    from t3d.dllm.errors import UserError
    from t3d.pipeline.rollout import UnitRunner

    job = job_for(tmp_path, teacher)
    job = dataclasses.replace(job, teacher_identity={**job.teacher_identity, "fingerprint": "0123456789abcdef"})
    with pytest.raises(UserError, match=f"fingerprint {teacher.fingerprint}, the driver saw 0123456789abcdef"):
        UnitRunner(job)


def test_a_unit_refills_finished_slots(teacher):
    """Continuous batching: with 2 slots, a row that stops early hands its slot to the next row."""
    from t3d.pipeline.rollout import sample_rows

    rows = unit_rows_of(UNIT, 2)
    cfg = RolloutConfig(rollouts_per_prompt=2, batch_size=2, sampler=SamplerConfig(steps_per_block=4))
    out, _ = sample_rows(teacher, [p.ids for p, _, _ in rows], [s for _, _, s in rows], cfg)
    fixed = sum(max(out.num_steps[i : i + 2]) for i in range(0, len(rows), 2))  # fixed batches wait for their longest row
    assert len(set(out.num_steps.tolist())) > 1 and out.nfe < fixed


def unit_rows_of(unit, rollouts):
    from t3d.pipeline.units import unit_rows

    return unit_rows(unit, rollouts, 5)
