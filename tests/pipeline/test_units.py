"""Work units and row seeds: deterministic, complete, independent of how the work is cut."""

from t3d.pipeline.prompts import EncodedPrompt
from t3d.pipeline.units import plan_units, row_seed, unit_rows


def prompts(n):
    return [EncodedPrompt(index=i, ids=(5, i + 4), text=None, answer=None) for i in range(n)]


def test_units_cover_every_prompt_once_in_order():
    units = plan_units(prompts(10), shard_size=4)
    assert [u.name for u in units] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [u.prompt_indices for u in units] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_units(prompts(10), shard_size=4) == units


def test_row_seeds_do_not_depend_on_the_shard_size():
    by_shard_4 = [row for u in plan_units(prompts(10), 4) for row in unit_rows(u, rollouts=3, seed=7)]
    by_shard_3 = [row for u in plan_units(prompts(10), 3) for row in unit_rows(u, rollouts=3, seed=7)]
    assert [(p.index, r, s) for p, r, s in by_shard_4] == [(p.index, r, s) for p, r, s in by_shard_3]


def test_row_seeds_are_distinct_stable_and_follow_the_global_seed():
    seeds = {row_seed(7, p, r) for p in range(200) for r in range(8)}
    assert len(seeds) == 1600
    assert all(0 <= s < 2**63 for s in seeds)
    assert row_seed(7, 3, 1) == row_seed(7, 3, 1)
    assert row_seed(7, 3, 1) != row_seed(8, 3, 1)
    assert row_seed(0, 1, 0) != row_seed(0, 0, 1)
