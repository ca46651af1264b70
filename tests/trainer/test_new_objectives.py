"""The few-step objectives beside T3D (docs/OBJECTIVES.md): certainty (dParallel), cap (LLaDA 2.0),
d3llm (d3LLM). Each against its formula on numbers worked by hand, zero where it must be,
the complementary view on real states, exact under accumulation and two gloo workers (one
spawn for all three), what each needs from the dataset, `t3d-distill --loss certainty`
and t3d-run's `[distill] loss = "certainty"`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from full_logits import LogitsStudent, run_objective, states_of
from gloo_workers import run_workers
from typer.testing import CliRunner

from t3d.dllm.errors import UserError
from t3d.dllm.sampling import SamplerConfig
from t3d.scheduler import run_config as rc
from t3d.trainer.build import Dist, build_trainer
from t3d.trainer.config import build_config
from t3d.trainer.distill import app
from t3d.trainer.objectives import OBJECTIVES, Objective, ObjectiveConfig, register
from t3d.trainer.objectives.certainty import complement
from t3d.trainer.states import StateConfig, build_states
from t3d.trainer.step import train_step

NEW = ("certainty", "cap", "d3llm")
LN2 = math.log(2.0)

# Hand-worked distributions, one per response position (V = 3), the same for every view of a row:
#   p0 = (1/2, 1/4, 1/4), x0 = 0: right;  CE = ln 2
#   p1 = (1/8, 3/4, 1/8), x0 = 0: wrong;  CE = ln 8 = 3 ln 2
#   p2 = (1/4, 1/4, 1/2), x0 = 2: right;  CE = ln 2
# Entropy at T = 1/2 of p0 (and p2): softmax(log p / T) ∝ p^2 = (1/4, 1/16, 1/16) -> (2/3, 1/6, 1/6),
#   H_half = (2/3) ln(3/2) + (1/3) ln 6.  At T = 1: H_one = (1/2) ln 2 + (1/2) ln 4 = (3/2) ln 2.
PROBS = torch.tensor([[0.5, 0.25, 0.25], [0.125, 0.75, 0.125], [0.25, 0.25, 0.5]])
X0 = torch.tensor([0, 0, 2])
H_HALF = 2 / 3 * math.log(1.5) + math.log(6.0) / 3
H_ONE = 1.5 * LN2
# Row a: M = {0, 1} (so the complement M' = {2}); row b: M = {0, 1, 2} (M' empty).
SUPERVISED = torch.tensor([[True, True, False], [True, True, True]])


def _run(kind: str, probs=PROBS, x0=X0, supervised=SUPERVISED, **cfg):
    logits = probs.log().expand(len(supervised), *probs.shape)  # (B, L, V): row r's logits for every view of it
    student = LogitsStudent(lambda ids: logits[ids[:, 0]], mask_id=7)
    states = states_of(x0.expand_as(supervised).clone(), supervised, input_ids=torch.arange(len(supervised))[:, None])
    return run_objective(kind, states, student, cfg=ObjectiveConfig(kind=kind, **cfg))


def test_certainty_on_hand_computed_numbers():
    # row a, state: CE mean over {0, 1} = (ln 2 + 3 ln 2) / 2 = 2 ln 2; C = {0}: H_half.
    #        complement: CE over {2} = ln 2; C' = {2}: H_half.
    # row b, state: CE mean over {0, 1, 2} = 5 ln 2 / 3; C = {0, 2}: H_half; complement empty: 0.
    row_a = 2 * LN2 + 2 * H_HALF + LN2 + 2 * H_HALF
    row_b = 5 * LN2 / 3 + 2 * H_HALF
    loss, metrics = _run("certainty")
    assert loss.item() == pytest.approx((row_a + row_b) / 2, rel=1e-6)  # a mean over rows of per-row means
    assert metrics["ce"].numerator.item() == pytest.approx((3 * LN2 + 5 * LN2 / 3) / 2, rel=1e-6)
    assert metrics["entropy"].numerator.item() == pytest.approx(3 * H_HALF / 2, rel=1e-6)
    share = metrics["correct_share"]  # right: row a {0} + {2}, row b {0, 2}; masked: 2 + 1 + 3
    assert share.numerator.item() / share.count.item() == pytest.approx(4 / 6)
    off, _ = _run("certainty", complement=False, entropy_weight=1.0, entropy_temperature=1.0)
    assert off.item() == pytest.approx((2 * LN2 + H_ONE + 5 * LN2 / 3 + H_ONE) / 2, rel=1e-6)


def test_cap_on_hand_computed_numbers():
    # CE: a token mean over every M of the step: (ln 2 + 3 ln 2 + ln 2 + 3 ln 2 + ln 2) / 5 = 9 ln 2 / 5.
    # Entropy at T = 1 per row over its right positions (a: {0}, b: {0, 2}), then over rows: H_one.
    loss, metrics = _run("cap", entropy_weight=2.0)
    assert metrics["ce"].numerator.item() == pytest.approx(9 * LN2 / 5, rel=1e-6)
    assert loss.item() == pytest.approx(9 * LN2 / 5 + 2 * H_ONE, rel=1e-6)
    wrong = torch.tensor([[0.25, 0.5, 0.25]] * 3)  # argmax 1, x0 0 everywhere: nothing right, no entropy term
    loss, metrics = _run("cap", probs=wrong, x0=torch.zeros(3, dtype=torch.long))
    assert metrics["entropy"].numerator.item() == 0.0 and loss.item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_d3llm_on_hand_computed_numbers():
    # (CE(x) + CE(x') + w H(x)) / 4, no entropy on the complement: row a (2 ln 2 + ln 2 + 2 H_half) / 4,
    # row b (5 ln 2 / 3 + 0 + 2 H_half) / 4.
    loss, _ = _run("d3llm")
    assert loss.item() == pytest.approx(((3 * LN2 + 2 * H_HALF) + (5 * LN2 / 3 + 2 * H_HALF)) / 4 / 2, rel=1e-6)


@pytest.mark.parametrize("kind", NEW)
def test_a_student_equal_to_its_targets_has_zero_loss(kind):
    sure = torch.full((3, 3), -60.0).scatter(1, X0[:, None], 60.0).softmax(-1)  # all mass on x0
    loss, metrics = _run(kind, probs=sure)
    assert abs(loss.item()) < 1e-9 and metrics["correct_share"].numerator.item() > 0


def test_the_complement_swaps_the_trained_block_on_real_states():
    """semi-AR: only the current block is swapped; block-causal: every block; padding never joins."""
    x0 = torch.tensor([[5, 6, 7, 8, 9, 10, 1, 0]])
    reveal = torch.tensor([[0, 1, 1, 0, 3, 2, 2, -1]])  # two blocks of 4, the last position padding
    for layout in ("semi_ar", "block_causal"):
        cfg = StateConfig(block_size=4, mask_id=99, eos_id=1, layout=layout, random_ratio=0.0)
        for seed in range(4):
            states = build_states(torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.bool), x0, reveal, cfg,
                                  torch.Generator().manual_seed(seed))  # fmt: skip
            ids, masked = complement(states, mask_id=99)
            length = x0.shape[1]
            assert torch.equal(states.input_ids[:, -length:], states.noisy)  # the noisy copy is the last L columns
            assert torch.equal(ids[:, :-length], states.input_ids[:, :-length])
            shown = ids[:, -length:]
            trained = states.supervised | masked
            assert not (states.supervised & masked).any() and not (masked & states.padding).any()
            assert torch.equal(shown[masked], torch.full_like(shown[masked], 99))
            assert torch.equal(shown[states.supervised], states.targets[states.supervised])
            assert torch.equal(shown[~trained], states.noisy[~trained])
            if layout == "block_causal":
                assert torch.equal(trained, ~states.padding)
            else:
                block = int(states.current_block[0])
                assert torch.equal(trained[0], (torch.arange(length) // 4 == block) & ~states.padding[0])


def test_dparallel_states_mask_the_current_block_at_one_half():
    """--state-order dparallel: one block at a time, each position of it masked i.i.d. at ~0.5 whatever the
    teacher's order, earlier blocks clean, later ones masked; with --supervise-padding, padding too."""
    n = 400
    x0 = torch.tensor([[5, 6, 7, 8, 9, 10, 1, 0]]).expand(n, 8)
    reveal = torch.tensor([[0, 1, 1, 0, 3, 2, 2, -1]]).expand(n, 8)  # the teacher's order: ignored
    cfg = StateConfig(block_size=4, mask_id=99, eos_id=1, layout="semi_ar", random_ratio=0.0, state_order="dparallel",
                      supervise_padding=True)  # fmt: skip
    st = build_states(torch.tensor([[3, 4]]).expand(n, 2), torch.ones(n, 2, dtype=torch.bool), x0, reveal, cfg,
                      torch.Generator().manual_seed(0))  # fmt: skip
    block = (torch.arange(8) // 4)[None, :]  # (1, L)
    current = st.current_block[:, None]  # (N, 1)
    masked = st.noisy == 99
    assert not masked[block < current].any() and masked[block > current].all()
    assert torch.equal(st.supervised, masked & (block == current))
    share = st.supervised.sum().item() / (n * 4)  # 1,600 positions: 0.5 +- 0.05 is over 4 standard deviations
    assert 0.45 < share < 0.55 and st.supervised[:, 7].any()  # the padding position is supervised too
    assert set(st.current_block.tolist()) == {0, 1}


# --- through the trainer: exact under accumulation and two workers ---------------------------------------------


KEYS = ("loss", "ce", "entropy", "correct_share", "grad_norm")


@pytest.fixture(scope="module")
def greedy_data(kit, teachers, tmp_path_factory):
    """The teacher's greedy rollouts, without top-k: a student equal to the teacher predicts part of M right
    (so the certainty term is live from the first step), and nothing these objectives read is missing."""
    cfg = SamplerConfig(max_new_tokens=8, block_size=4, steps_per_block=2, temperature=0.0, logits_top_k=0)
    return kit.collect(tmp_path_factory.mktemp("greedy"), teachers["bidirectional"], prompts=16, shards=2, cfg=cfg)


def _flags(kit, data, teachers, out, kind, **extra):
    return kit.flags(data, teachers["bidirectional"], out, loss=kind, random_ratio=0.0, **extra)


def _first_steps(all_flags: dict, dist=Dist()) -> dict:
    """{objective: (first step's metrics, the rows it read)}."""
    out = {}
    for kind, flags in all_flags.items():
        cfg = build_config(flags)
        trainer = build_trainer(cfg, dist, log=lambda *a: None)
        batches = [trainer.loader.next_batch() for _ in range(cfg.train.grad_accum)]
        out[kind] = (train_step(trainer, batches), torch.cat([b.row_id for b in batches]).numpy())
    return out


def steps_on_a_worker(rank: int, world: int, all_flags: dict) -> dict:
    """In a spawned gloo worker (`gloo_workers`): every objective's first step."""
    return _first_steps(all_flags, Dist(rank=rank, world=world))


@pytest.mark.slow
def test_new_objectives_reduce_exactly_under_accumulation_and_two_workers(kit, teachers, greedy_data, tmp_path):
    def every(name, **extra):
        return {k: _flags(kit, greedy_data, teachers, tmp_path / name / k, k, **extra) for k in NEW}

    one = _first_steps(every("one", batch_size=4))
    accum = _first_steps(every("acc", batch_size=2, grad_accum=2))
    two = every("two", batch_size=2, num_workers=2)
    workers = run_workers(__file__, "steps_on_a_worker", (two,), tmp_path / "store")
    for kind in NEW:
        (m_one, rows), (m_acc, rows_acc) = one[kind], accum[kind]
        m_two = workers[0][kind][0]
        assert m_two == workers[1][kind][0], kind  # every worker reports the same reduced metrics
        two_rows = np.concatenate([w[kind][1] for w in workers])
        same = [sorted(map(tuple, r.tolist())) for r in (rows, rows_acc, two_rows)]
        assert same[0] == same[1] == same[2], kind  # the same global batch
        assert m_one["entropy"] > 0 and m_one["correct_share"] > 0, (kind, m_one)  # the certainty term is live
        for key in KEYS:
            assert m_acc[key] == pytest.approx(m_one[key], rel=1e-5, abs=1e-7), (kind, key)
            assert m_two[key] == pytest.approx(m_one[key], rel=1e-5, abs=1e-7), (kind, key)


# --- what each needs from the dataset ----------------------------------------------------------------------------


class NeedsDenseStates(Objective):
    """A test objective that reads the dense states, which the fixture datasets do not store
    (registered only inside the test, so no other test's loop over `OBJECTIVES` meets it)."""

    name = "test_needs_states"
    arrays = ("states",)


def test_objectives_say_what_they_read_and_a_dataset_without_it_is_refused(kit, teachers, datasets, tmp_path):
    assert all(OBJECTIVES[k].arrays == () for k in NEW)  # x0 and the reveal order: every dataset holds them
    register(NeedsDenseStates)
    try:
        flags = _flags(kit, datasets["bidirectional"], teachers, tmp_path / "out", "test_needs_states")
        with pytest.raises(UserError) as err:
            build_trainer(build_config(flags), log=lambda *a: None)
    finally:
        OBJECTIVES.pop(NeedsDenseStates.name)
    assert "states" in str(err.value) and "\n" not in str(err.value)


def test_distill_cli_trains_with_loss_certainty(kit, teachers, datasets, tmp_path):
    out = tmp_path / "out"
    args = ["--data", str(datasets["bidirectional"]), "--model", str(teachers["bidirectional"]), "--out", str(out),
            "--loss", "certainty", "--entropy-weight", "1.5", "--max-steps", "2", "--batch-size", "2", "--no-progress",
            "--device", "cpu", "--warmup-steps", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(k in lines[0] for k in ("loss", "ce", "entropy", "correct_share"))
    assert "entropy_weight 1.5" in result.stdout
    assert (out / "student").is_dir()


def test_t3d_run_distils_certainty_in_every_round(tmp_path):
    spec = rc.parse_spec({"run": {"out": str(tmp_path), "rounds": 2}, "distill": {"loss": "certainty"}}, {}, "job.toml")
    assert [rc.distill_config(spec, r).loss.kind for r in (1, 2)] == ["certainty", "certainty"]
    labels = [m.split("=")[0] for m in rc.eval_config(spec, 2).models.model]
    assert labels == ["teacher", "certainty", "certainty-r2"]
