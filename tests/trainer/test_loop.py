"""The training loop on tiny real models: exact accumulation, learning, exact resume, rounds."""

import json
import shutil

import numpy as np
import pytest
import torch

from t3d.dllm import SamplerConfig, load_model, sample
from t3d.dllm.loading import BUILTIN_DIR

BUILTIN = "builtin"  # the shipped teacher
from t3d.trainer import checkpoint as ckpt
from t3d.trainer.config import build_config
from t3d.trainer.loop import build_trainer, run_steps, train, train_step
from t3d.trainer.step import evaluate


def grads(trainer):
    return {n: p.grad.clone() for n, p in trainer.student.net.named_parameters()}


@pytest.mark.parametrize("family, loss", [("bidirectional", "t3d"), ("block_causal", "fkl")])
def test_batch_4x1_equals_4_micro_batches_of_1(kit, teachers, datasets, tmp_path, family, loss):
    """Same rows, same states: one batch of 4 and 4 accumulated batches of 1 give one gradient."""
    runs = {}
    for batch_size, accum in ((4, 1), (1, 4)):
        cfg = build_config(kit.flags(datasets[family], teachers[family], tmp_path / f"{batch_size}", loss=loss,
                                     batch_size=batch_size, grad_accum=accum))  # fmt: skip
        trainer = build_trainer(cfg, log=lambda *a: None)
        metrics = train_step(trainer, [trainer.loader.next_batch() for _ in range(accum)])
        runs[batch_size] = (metrics, grads(trainer))
    (m4, g4), (m1, g1) = runs[4], runs[1]
    assert m4["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m4["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    for name in g4:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    assert m4["grad_norm"] > 0


def _learns(kit, cfg):
    """Train cfg in-process; the objective on every row (fixed states) must drop, DDO both ways."""
    trainer = build_trainer(cfg, log=lambda *a: None)
    fixed = [trainer.loader.load_rows(np.arange(trainer.loader.num_rows), epoch=0)]  # every row, fixed states
    before = evaluate(trainer, fixed)
    assert before["loss"] == pytest.approx(1.5 * np.log(2) + 0.2 * before["path"], rel=1e-5)  # DDO at p = p_ref
    run_steps(trainer, lambda m: None)
    after = evaluate(trainer, fixed)
    assert after["loss"] < before["loss"] - 0.03, (before, after)  # deterministic on CPU
    assert after["real_log_ratio"] > 0  # the teacher's answers became likelier than under p_ref
    return before, after


def test_short_run_learns_and_the_student_loads_and_samples(kit, teachers, datasets, tmp_path):
    _, after = _learns(kit, build_config(kit.flags(datasets["bidirectional"], teachers["bidirectional"],
                                                   tmp_path / "out", max_steps=20, lr=1e-2, batch_size=8)))  # fmt: skip
    assert after["fake_log_ratio"] < 0  # random teacher: fakes are rarely x0, so DDO pushes them down
    result = train(build_config(kit.flags(datasets["bidirectional"], teachers["bidirectional"], tmp_path / "cli",
                                          max_steps=3)), log=lambda *a: None)  # fmt: skip
    start, end = kit.weights(teachers["bidirectional"]), kit.weights(result.student)
    assert any(not np.array_equal(start[k], end[k]) for k in start)
    student = load_model(result.student)
    out = sample(student, kit.random_prompts(3, seed=5), SamplerConfig(max_new_tokens=8, block_size=4), [0, 1, 2])
    assert out.tokens.shape == (3, 8) and (out.reveal_step[out.tokens != student.pad_id] >= 0).all()


@pytest.mark.slow
@pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(), reason="shipped teacher not in dllm/builtin/ yet")
def test_short_run_on_the_builtin_teacher_and_task(kit, tmp_path):
    from t3d.dllm.task import BuiltinTask

    prompts = BuiltinTask(seed=0).prompts("train")[:32]
    data = kit.collect(tmp_path / "data", BUILTIN, prompts=prompts, shards=2, cfg=SamplerConfig())
    _, after = _learns(kit, build_config(kit.flags(data, BUILTIN, tmp_path / "out", max_steps=20, lr=1e-3,
                                                   batch_size=8)))  # fmt: skip
    # no claim on the fakes: a trained teacher's one-shot argmax is often x0 itself (DESIGN.md section 5)


def test_block_causal_run_checks_the_metrics_log(kit, teachers, datasets, tmp_path):
    cfg = build_config(kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path, max_steps=3, grad_accum=2))
    result = train(cfg, log=lambda *a: None)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for key in ("loss", "ddo", "path", "logp_real_student", "logp_fake_ref", "grad_norm", "lr", "tokens_per_s"):
        assert all(np.isfinite(line[key]) for line in lines), key
    assert lines[0]["rows"] == 8 and len(result.rows) == 24
    first = lines[0]  # measured before the first update: student = reference
    assert first["logp_real_student"] == pytest.approx(first["logp_real_ref"], abs=1e-6)
    assert first["logp_fake_student"] == pytest.approx(first["logp_fake_ref"], abs=1e-6)
    assert first["logp_fake_ref"] >= first["logp_real_ref"]  # the fake is the reference's argmax


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_exactly(kit, teachers, datasets, tmp_path):
    """Stop after N steps, resume to 2N: same losses, same final weights as one 2N run."""
    n = 3
    flags = kit.flags(datasets["bidirectional"], teachers["bidirectional"], tmp_path / "full", max_steps=2 * n,
                      save_every=n, grad_accum=2, round_every=2, warmup_steps=2, random_ratio=0.3)  # fmt: skip
    full = train(build_config(flags), log=lambda *a: None)
    # the interrupted run: everything after step N never happened
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / "checkpoints" / ckpt.step_name(2 * n))
    shutil.rmtree(part / "student")
    (part / "checkpoints" / ckpt.LATEST).write_text(ckpt.step_name(n))
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:n] + ['{"step": 99, "loss": 0}']) + "\n")
    resumed = train(build_config(flags | {"out": str(part), "resume": True}), log=lambda *a: None)
    assert resumed.step == 2 * n
    drop = ("step_time_s", "tokens_per_s", "rows_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(_metrics(part)) == strip(_metrics(tmp_path / "full"))
    a, b = kit.weights(full.student), kit.weights(resumed.student)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(resumed.rows, full.rows[len(full.rows) // 2 :])


def test_round_every_copies_the_student_into_the_reference(kit, teachers, datasets, tmp_path):
    cfg = build_config(kit.flags(datasets["bidirectional"], teachers["bidirectional"], tmp_path, max_steps=3, round_every=2))
    trainer = build_trainer(cfg, log=lambda *a: None)
    snapshots = []
    run_steps(trainer, lambda m: snapshots.append((m["step"], kit.weights(trainer.reference.net), kit.weights(trainer.student.net))))
    start = kit.weights(teachers["bidirectional"])
    step1, step2, step3 = snapshots
    assert all(np.array_equal(step1[1][k], start[k]) for k in start)  # still the starting model
    assert all(np.array_equal(step2[1][k], step2[2][k]) for k in start)  # refreshed after step 2
    assert all(np.array_equal(step3[1][k], step2[2][k]) for k in start)  # frozen until the next round
    assert trainer.reference.refreshed_at == 2


@pytest.mark.parametrize("loss", ["ddo", "ce"])
def test_every_objective_trains_and_only_ddo_kinds_run_a_reference(kit, teachers, datasets, tmp_path, loss):
    cfg = build_config(kit.flags(datasets["bidirectional"], teachers["bidirectional"], tmp_path, loss=loss,
                                 state_order="reference"))  # fmt: skip
    trainer = build_trainer(cfg, log=lambda *a: None)
    metrics = train_step(trainer, [trainer.loader.next_batch()])
    assert (trainer.reference is not None) == (loss == "ddo")
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    if loss == "ddo":  # lambda_path = 0: the loss is DDO alone, at p = p_ref exactly (1 + alpha) log 2
        assert metrics["loss"] == pytest.approx(1.5 * np.log(2), rel=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(kit, teachers, datasets, tmp_path):
    results = []
    for checkpointing in (False, True):
        cfg = build_config(kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path,
                                     gradient_checkpointing=checkpointing))  # fmt: skip
        trainer = build_trainer(cfg, log=lambda *a: None)
        assert trainer.student.net.is_activation_checkpointing == checkpointing
        train_step(trainer, [trainer.loader.next_batch()])
        results.append(grads(trainer))
    for name, g in results[0].items():
        torch.testing.assert_close(g, results[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_random_tokens_are_drawn_between_special_ids(teachers, tmp_path):
    from t3d.dllm.tiny import build_checkpoint
    from t3d.trainer.build import random_token_range

    assert random_token_range(load_model(teachers["bidirectional"])) == (3, 63)  # pad 1, eos 2, mask 63
    middle = build_checkpoint(tmp_path / "m", "bidirectional", mask_id=5, max_position_embeddings=32)
    assert random_token_range(load_model(middle)) == (6, 64)


def test_step_metrics_count_supervised_tokens_and_the_padding_share(kit, teachers, datasets, tmp_path):
    shares = {}
    for flag in (False, True):
        cfg = build_config(kit.flags(datasets["bidirectional"], teachers["bidirectional"], tmp_path / str(flag),
                                     supervise_padding=flag, batch_size=8))  # fmt: skip
        trainer = build_trainer(cfg, log=lambda *a: None)
        metrics = train_step(trainer, [trainer.loader.next_batch()])
        assert metrics["supervised_tokens"] > 0 and metrics["response_padding_tokens"] > 0
        shares[flag] = metrics["padding_share"]
    assert shares[False] == 0.0 and shares[True] > 0.0


@pytest.mark.slow
@pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(), reason="shipped teacher not in dllm/builtin/ yet")
def test_no_flags_on_a_fresh_builtin_dataset_lowers_the_loss_within_100_steps(kit, tmp_path):
    """`t3d-distill` with no flags (only where the data is and where to write): the builtin preset trains."""
    from t3d.dllm.task import BuiltinTask
    from t3d.trainer.config import load_config

    prompts = BuiltinTask(seed=0).prompts("train")[:48]
    data = kit.collect(tmp_path / "data", BUILTIN, prompts=prompts, shards=2, cfg=SamplerConfig())
    cfg = load_config(None, {"data": str(data), "out": str(tmp_path / "out"), "device": "cpu"})
    assert cfg.preset == "builtin"
    trainer = build_trainer(cfg, log=lambda *a: None)
    fixed = [trainer.loader.load_rows(np.arange(trainer.loader.num_rows), epoch=0)]
    before = evaluate(trainer, fixed)
    for _ in range(100):
        train_step(trainer, [trainer.loader.next_batch()])
    after = evaluate(trainer, fixed)
    assert after["loss"] < before["loss"] - 0.1, (before["loss"], after["loss"])
