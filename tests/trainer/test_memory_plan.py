"""The memory plan: its arithmetic by hand, the refusal of a run that cannot fit a stated budget
(with options that each fit when re-planned), and the plan against measured peaks on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from t3d.dllm.errors import UserError
from t3d.trainer import distill
from t3d.trainer.config import build_config
from t3d.trainer.memory_plan import (
    CUDA_RUNTIME, GIB, ModelShape, Setup, _saved_per_token, _with, candidates, check_run, data_lengths, lm_head_bytes,
    parse_size, plan, plan_run,
)  # fmt: skip

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_plan.py"
TOLERANCE_PCT = 15
"""Planned peak vs measured peak RSS, at each calibrated setup."""

SHAPE = ModelShape(parameters=1_000_000, largest=100_000, vocab=1000, hidden=100, layers=4, heads=4, kv_heads=4,
                   head_dim=25, intermediate=400, qk_norm=False, tied=False, copies=2)  # fmt: skip


def test_full_fine_tuning_in_float32_is_16_bytes_per_parameter_and_fsdp_divides_by_the_workers():
    one = plan(SHAPE, Setup(reference=False))
    assert (one.weights, one.gradients, one.optimizer) == (4_000_000, 4_000_000, 8_000_000)  # 4 + 4 + 8 bytes
    assert one.step_temporaries == 2 * 100_000 * 4  # CPU AdamW: two copies of the largest tensor
    four = plan(SHAPE, Setup(reference=True, workers=4, fsdp=True))
    assert (four.gradients, four.optimizer, four.reference) == (1_000_000, 2_000_000, 1_000_000)  # / 4
    working = (SHAPE.root_parameters + 2 * SHAPE.layer_parameters) * 4  # gathered root + two layers
    assert four.weights == 1_000_000 + working * 3 // 4
    assert SHAPE.root_parameters == 2 * 1000 * 100 + 100 + (1_000_000 - 200_100) % 4
    bf16 = plan(SHAPE, Setup(device="cuda", dtype_bytes=2, activation_bytes=2, reference=False))
    assert (bf16.weights, bf16.gradients, bf16.optimizer, bf16.step_temporaries) == (2_000_000, 2_000_000, 4_000_000, 0)
    assert bf16.runtime > 0  # the CUDA context


def test_lora_trains_adapters_only_and_its_reference_is_free():
    lora = plan(SHAPE, Setup(trainable=5000, reference=True))
    assert (lora.weights, lora.gradients, lora.optimizer, lora.reference) == (4_000_000, 20_000, 40_000, 0)
    assert lora.lm_head == lm_head_bytes(SHAPE, Setup(), head_trained=False)  # the frozen head has no V x H gradient
    rounds = plan(SHAPE, Setup(trainable=5000, reference=True, reference_adapter=True))
    assert rounds.reference == 20_000  # a frozen copy of the adapters


@pytest.mark.parametrize("workers", [1, 2])
def test_offload_leaves_the_gathered_working_set_on_the_device(workers):
    on = plan(SHAPE, Setup(device="cuda", workers=workers, fsdp=True, offload=True))
    off = plan(SHAPE, Setup(device="cuda", workers=workers, fsdp=True))
    working = (SHAPE.root_parameters + 2 * SHAPE.layer_parameters) * 4
    assert (on.weights, on.optimizer, on.reference, on.step_temporaries) == (working, 0, 0, 0)
    assert on.host == 1_000_000 * 4 // workers + off.gradients + off.optimizer + off.reference
    assert on.peak == working + max(on.activations + on.lm_head, working) + CUDA_RUNTIME
    assert on.peak < off.peak
    cpu = plan(SHAPE, Setup(device="cpu", workers=workers, fsdp=True, offload=True))  # host and device: one memory
    assert cpu.peak - cpu.host == on.peak - CUDA_RUNTIME and cpu.peak > plan(SHAPE, Setup(workers=workers, fsdp=True)).peak


def test_activations_and_the_peak_rule_by_hand():
    per_token = 4 * (4 * 100 + 4 * 100 + 4 * 400) + 4 * 2 * 100  # streams/norms, q k v out, MLP; float32 norm internals
    assert _saved_per_token(SHAPE, 4) == per_token
    setup = Setup(batch=2, prompt=10, response=20, reference=False)
    p = plan(SHAPE, setup)
    tokens, length = 2 * (10 + 2 * 20), 10 + 2 * 20
    assert p.activations == tokens * (4 * per_token + 100 * 8) + 2 * length * length * 4
    assert p.peak == p.weights + p.optimizer + max(p.activations + p.lm_head, p.gradients + p.step_temporaries)
    ckpt = plan(SHAPE, Setup(batch=2, prompt=10, response=20, reference=False, checkpointing=True))
    assert ckpt.activations == tokens * (4 * 100 * 4 + per_token + 100 * 8) + 2 * length * length * 4
    accum = plan(SHAPE, Setup(batch=2, prompt=10, response=20, reference=False, accum=2))
    assert accum.peak - p.peak == p.gradients + 2 * length * length * 4  # gradients held while accumulating
    kept = chunk = 20 * 1000 * 4  # half of 2 x 20 positions supervised: the softmax kept, one chunk of 20 rows
    assert lm_head_bytes(SHAPE, setup, head_trained=True) == kept + chunk + 1000 * 100 * 4  # + the head's gradient
    assert lm_head_bytes(SHAPE, setup, head_trained=False) == kept + 2 * chunk


def test_sizes():
    assert parse_size("24GiB") == 24 * GIB and parse_size("80 GB") == 80 * 10**9 and parse_size("512MiB") == 1 << 29
    with pytest.raises(UserError, match="--memory-budget must be a size like"):
        parse_size("lots")
    with pytest.raises(UserError, match="--memory-budget must be a size"):
        build_config({"memory_budget": "24 apples"})


def test_a_run_that_cannot_fit_is_refused_before_loading_with_options_that_fit(kit, teachers, datasets, tmp_path):
    flags = kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path / "out", batch_size=8)
    printed = []
    full = check_run(build_config(flags), log=printed.append)
    assert "memory plan" in printed[0] and "peak" in printed[0]
    assert data_lengths(build_config(flags).data)[1] == 8  # the fixture's responses
    budget = f"{int(full.peak * 0.8)}B"
    with pytest.raises(UserError) as refused:
        distill.run(build_config(flags | {"memory_budget": budget}))
    message = str(refused.value)
    assert "\n" not in message and "exceeds" in message and "these would fit: " in message
    assert not (tmp_path / "out").exists()  # refused before the run took its output directory
    proposals = [part.split(" (")[0] for part in message.split("these would fit: ")[1].split("; ")]
    assert "--gradient-checkpointing" in proposals and any(p.startswith("--batch-size") for p in proposals)
    for proposal in proposals:  # each one, applied, fits the same budget
        fitted = check_run(build_config(flags | _options(proposal) | {"memory_budget": budget}), log=lambda *a: None)
        assert fitted.peak <= full.peak * 0.8, proposal
    singles = [check_run(build_config(flags | _options(p)), log=lambda *a: None).peak for p in proposals]
    tight = f"{int(min(singles)) - 1}B"  # no single option fits: a pair is proposed, and fits
    with pytest.raises(UserError, match="these would fit: ") as refused:
        check_run(build_config(flags | {"memory_budget": tight}), log=lambda *a: None)
    (pair,) = [part.split(" (")[0] for part in str(refused.value).split("these would fit: ")[1].split("; ")]
    assert len(_options(pair)) >= 2
    assert check_run(build_config(flags | _options(pair) | {"memory_budget": tight}), log=lambda *a: None)


def test_one_worker_is_offered_offload_where_it_lowers_the_peak(kit, teachers, datasets, tmp_path):
    flags = kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path / "out", batch_size=8)
    cfg = build_config(flags)
    assert {"offload": True} in candidates(cfg)  # FSDP2 over the one process: no second worker needed
    assert {"strategy": "fsdp", "offload": True} in candidates(build_config(flags | {"num_workers": 2}))
    shape, lengths = ModelShape.read(teachers["block_causal"]), data_lengths(cfg.data)
    plans = {(device, offload): plan_run(_with(cfg, offload=offload), shape, lengths, device)
             for device in ("cuda", "cpu") for offload in (False, True)}  # fmt: skip
    assert plans["cuda", True].peak < plans["cuda", False].peak and plans["cuda", True].host > 0
    assert plans["cpu", True].peak >= plans["cpu", False].peak  # on the CPU, offloading moves nothing off the device


def _options(proposal: str) -> dict:
    """`--lora-r 16 --gradient-checkpointing` -> {"lora_r": 16, "gradient_checkpointing": True}."""
    words, changes = proposal.split(), {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
            changes[word[2:].replace("-", "_")] = int(value) if str(value).isdigit() else value
    return changes


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory_plan", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_plan_is_within_15_percent_of_measured_peaks(tmp_path):
    rows = _bench().compare(tmp_path, ["ce-b4", "t3d-ckpt-b8"], steps=2)
    print(rows)
    for name, row in rows.items():
        assert abs(row["error_pct"]) <= TOLERANCE_PCT, (name, row)
