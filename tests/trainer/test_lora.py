"""LoRA students (`--lora-r`): only the adapters train, the reference is the base with the adapters off,
the merged student is a drop-in for the family's own code, the adapter directory loads with peft, resume
is exact (with rounds), and DDP / FSDP on two workers train the same adapters as one worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_workers import run_workers
from safetensors.torch import load_file

from t3d.dllm import load_model
from t3d.dllm.errors import UserError
from t3d.trainer import checkpoint as ckpt
from t3d.trainer.build import Dist, build_trainer, quiet
from t3d.trainer.config import build_config
from t3d.trainer.logprobs import ResponseLogProbs
from t3d.trainer.sharding import is_offloaded
from t3d.trainer.loop import run_steps
from t3d.trainer.lora import ADAPTER_DIR, REFERENCE_ADAPTER, LoraConfig, adapter_parameter_count, matches, target_modules

FAMILIES = ("sdar", "llada", "dream")
LORA = {"lora_r": 4, "lora_alpha": 8.0, "lr": 1e-2, "batch_size": 4, "device": "cpu", "progress": False,
        "warmup_steps": 0, "random_ratio": 0.2}  # fmt: skip


def _flags(data: Path, model: Path, out: Path, **extra) -> dict:
    return {"data": str(data), "model": str(model), "out": str(out), "max_steps": 3, "save_every": 0} | LORA | extra


def _run(flags: dict, dist: Dist = Dist(), start: int = 0):
    """Build, train to max_steps, save and export (what `loop.train` does), keeping the trainer; `start`: the
    step the build must have restored (a resume)."""
    trainer = build_trainer(build_config(flags), dist, log=quiet)
    assert trainer.step == start, (trainer.step, start)
    run_steps(trainer, lambda metrics: None)
    if trainer.saved_step != trainer.step:
        ckpt.save(trainer)
    student = ckpt.export_student(trainer.last_checkpoint, Path(flags["out"])) if dist.is_main else None
    return trainer, student


@pytest.fixture(scope="module")
def runs(real_fixtures, kit, tmp_path_factory):
    """Per family: (teacher dir, dataset, trainer after 3 LoRA steps, exported student dir)."""
    root = tmp_path_factory.mktemp("lora")
    out = {}
    for name in FAMILIES:
        teacher = real_fixtures / name
        data = kit.collect(root / f"data-{name}", teacher, prompts=8, shards=1)
        trainer, student = _run(_flags(data, teacher, root / f"run-{name}"))
        out[name] = (teacher, data, trainer, student)
    return out


def _logits(model, seed: int = 0):
    ids = torch.randint(0, min(model.vocab_size, 300), (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.logits(ids, prompt_len=3, block_size=4)  # (2, 9, V)


def _log_probs(module, model, seed: int = 0):
    """log p of random ids at every position through a `ResponseLogProbs`-like module (the trainer's route)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(model.vocab_size, 300), (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    bias = model.family.attention_bias(mask, 3, 4, torch.float32)
    picks = torch.randint(0, model.vocab_size, (12, 2), generator=g)
    with torch.no_grad():  # the response: the last 6 columns
        return module(ids, bias, torch.arange(9).expand(2, 9), 6, mask[:, 3:], ids=picks)  # (12, 2)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_few_steps_train_only_the_adapters(runs, name):
    teacher_dir, _, trainer, student = runs[name]
    teacher = load_model(teacher_dir)
    base = teacher.net.state_dict()
    targets = target_modules(trainer.cfg.lora, teacher.family)
    for param_name, param in trainer.student.net.named_parameters():
        if ".lora_" in param_name:
            assert param.requires_grad == (".default." in param_name)
            continue
        assert not param.requires_grad
        assert torch.equal(param, base[param_name.replace(".base_layer.", ".")]), param_name  # the base never moves
    adapter = load_file(str(student / ADAPTER_DIR / "adapter_model.safetensors"))
    assert adapter and all(float(t.abs().max()) > 0 for n, t in adapter.items() if "lora_B" in n)  # B starts at 0
    merged, published = load_file(str(student / "model.safetensors")), load_file(str(teacher_dir / "model.safetensors"))
    assert sorted(merged) == sorted(published)  # the teacher's own tensor names
    architecture = teacher.family.architecture
    for tensor_name, tensor in published.items():
        adapted = matches(architecture.native_name(tensor_name).removesuffix(".weight"), targets)
        assert torch.equal(merged[tensor_name], tensor) != adapted, tensor_name  # exactly the adapted weights moved


@pytest.mark.parametrize("name", FAMILIES)
def test_the_reference_is_the_base_with_adapters_off(runs, name):
    teacher_dir, _, trainer, _ = runs[name]
    teacher = load_model(teacher_dir)
    assert trainer.reference.shares_student and trainer.reference.refreshed_at == 0
    trainer.student.net.eval()  # no LoRA dropout in the student's own row below
    reference = _log_probs(trainer.ref_logprobs, trainer.student)
    base = _log_probs(ResponseLogProbs(teacher), teacher)
    student = _log_probs(trainer.logprobs, trainer.student)
    assert torch.equal(reference, base)
    assert not torch.allclose(student, base, atol=1e-3)  # the adapters are on again afterwards
    assert [p.requires_grad for p in trainer.student.net.parameters()].count(True) == len(trainer.adapters.trainable())


@pytest.mark.parametrize("name", FAMILIES)
def test_the_merged_student_is_a_drop_in_for_the_familys_own_code(runs, name, real_fixtures, upstream, tmp_path):
    teacher_dir, _, trainer, student = runs[name]
    assert (student / "config.json").read_bytes() == (teacher_dir / "config.json").read_bytes()
    reloaded = load_model(student)
    own = upstream.net(student, real_fixtures / f"{name}-compat", tmp_path / "own")
    assert upstream.parity(reloaded, own, lengths=(5, 9)) <= 1e-5
    trainer.student.net.eval()  # the checkpoint holds the merged weights in the training dtype (float32)
    merged = _logits(load_model(trainer.last_checkpoint))
    assert torch.allclose(merged, _logits(trainer.student), atol=1e-5)  # merged == adapted, up to float rounding


@pytest.mark.parametrize("name", FAMILIES)
def test_the_adapter_directory_loads_with_peft_and_gives_the_students_logits(runs, name, real_fixtures, upstream, tmp_path):
    from peft import PeftModel

    teacher_dir, _, trainer, student = runs[name]
    config = json.loads((student / ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(teacher_dir.resolve()) and config["r"] == 4
    base = load_model(teacher_dir)
    before = _logits(base)
    PeftModel.from_pretrained(base.net, str(student / ADAPTER_DIR)).eval()  # adapts base.net in place
    adapted = _logits(base)
    assert not torch.allclose(adapted, before, atol=1e-3)
    merged = load_model(trainer.last_checkpoint)  # the merged weights in float32
    assert torch.allclose(adapted, _logits(merged), atol=1e-5)
    if not base.family.architecture.renames:  # the family's own code names its modules as transformers does (SDAR)
        own = upstream.net(teacher_dir, real_fixtures / f"{name}-compat", tmp_path / "own")
        PeftModel.from_pretrained(own, str(student / ADAPTER_DIR)).eval()
        assert upstream.parity(merged, own, lengths=(5, 9)) <= 1e-5


def test_a_resumed_lora_run_with_rounds_equals_an_uninterrupted_one(runs, tmp_path):
    teacher_dir, data, _, _ = runs["sdar"]
    flags = _flags(data, teacher_dir, tmp_path / "whole", max_steps=4, save_every=2, round_every=2, lora_dropout=0.1)
    whole, _ = _run(flags)
    step4 = tmp_path / "whole" / "checkpoints" / ckpt.step_name(4)
    student_adapter = load_file(str(step4 / ADAPTER_DIR / "adapter_model.safetensors"))
    reference_adapter = load_file(str(step4 / REFERENCE_ADAPTER))
    assert len(reference_adapter) == len(student_adapter)  # refreshed at step 4: the reference is the student
    for key, value in reference_adapter.items():
        peft_key = "base_model.model." + key.replace(".reference.", ".")
        assert torch.equal(value, student_adapter[peft_key]), key
    whole.student.net.eval()
    with whole.reference.running():
        as_reference = _logits(whole.student)
    assert torch.equal(as_reference, _logits(whole.student))

    part = tmp_path / "part"  # interrupted after step 2
    shutil.copytree(tmp_path / "whole", part)
    shutil.rmtree(part / "checkpoints" / ckpt.step_name(4))
    (part / "checkpoints" / ckpt.LATEST).write_text(ckpt.step_name(2))
    resumed, _ = _run(flags | {"out": str(part), "resume": True}, start=2)
    assert resumed.reference.refreshed_at == 4
    again = part / "checkpoints" / ckpt.step_name(4)
    for file in (f"{ADAPTER_DIR}/adapter_model.safetensors", REFERENCE_ADAPTER, "model.safetensors"):
        a, b = load_file(str(step4 / file)), load_file(str(again / file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    state = ckpt.load_trainer_state(step4)["optimizer"]["state"]
    again_state = ckpt.load_trainer_state(again)["optimizer"]["state"]
    assert all(torch.equal(state[i]["exp_avg_sq"], again_state[i]["exp_avg_sq"]) for i in state)


def test_lora_with_offload_on_one_worker_trains_the_same_adapters(runs, tmp_path):
    """--lora-r with --offload on one GPU: FSDP2 over the one process keeps base and adapters on the CPU, and
    the adapters (and so the merged student) are those of the plain loop."""
    from t3d.trainer.loop import train

    teacher_dir, data, _, _ = runs["sdar"]
    flags = _flags(data, teacher_dir, tmp_path / "plain", max_steps=3)
    plain = train(build_config(flags), log=quiet).student
    offloaded = train(build_config(flags | {"out": str(tmp_path / "offload"), "offload": True}), log=quiet)
    assert is_offloaded(offloaded.model.net)
    for file in (f"{ADAPTER_DIR}/adapter_model.safetensors", "model.safetensors"):
        a, b = load_file(str(plain / file)), load_file(str(offloaded.student / file))
        assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6, file


def test_the_next_round_trains_a_lora_student_on_the_merged_one(runs, tmp_path):
    """On-policy rounds (t3d-run): the next round's teacher and base is the merged student."""
    _, data, _, student = runs["llada"]
    _, second = _run(_flags(data, student, tmp_path / "round-2", max_steps=1))
    assert json.loads((second / ADAPTER_DIR / "adapter_config.json").read_text())["base_model_name_or_path"] == str(student)
    assert (second / "config.json").read_bytes() == (student / "config.json").read_bytes()


def test_lora_options_counts_and_refusals(runs, tmp_path):
    teacher_dir, data, trainer, _ = runs["sdar"]
    raw = json.loads((teacher_dir / "config.json").read_text())
    trainable = sum(p.numel() for p in trainer.adapters.trainable())
    assert adapter_parameter_count(raw, trainer.cfg.lora, "sdar") == trainable > 0  # what the memory plan reads
    assert adapter_parameter_count(raw, LoraConfig(r=4, targets=("q_proj",)), "sdar") < trainable
    assert adapter_parameter_count(raw, LoraConfig(), "sdar") == 0
    cfg = build_config({"lora": {"r": 8, "targets": ["q_proj", "v_proj"]}})  # a config file's or preset's [lora] table
    assert (cfg.lora.r, cfg.lora.targets) == (8, ("q_proj", "v_proj"))
    over_preset = build_config({"preset": "paper-4b", "lora_r": 16})
    assert over_preset.lora.r == 16 and over_preset.optim.lr == build_config({"preset": "paper-4b"}).optim.lr
    with pytest.raises(UserError, match="--lora-r must be >= 0"):
        build_config({"lora_r": -1})
    with pytest.raises(UserError, match="--lora-targets nope: no such module"):
        build_trainer(build_config(_flags(data, teacher_dir, tmp_path / "bad", lora_targets=["nope"])), log=quiet)
    with pytest.raises(UserError, match="was trained with --lora-r 4"):  # resuming a LoRA run as a full fine-tune
        build_trainer(build_config(_flags(data, teacher_dir, trainer.cfg.train.out, lora_r=0, resume=True)), log=quiet)


def lora_steps_on_a_worker(rank: int, world: int, flags: dict) -> dict[str, dict[str, np.ndarray]]:
    """In a spawned gloo worker: 2 LoRA steps with DDP, then with FSDP (a checkpoint each step), then the FSDP
    run resumed from step 1; rank 0 returns each run's adapter."""
    from t3d.trainer import sharding

    adapters, dist = {}, Dist(rank=rank, world=world)
    for strategy in ("ddp", "fsdp"):
        out = Path(flags["out"]) / strategy
        trainer, _ = _run(flags | {"out": str(out), "strategy": strategy, "save_every": 1}, dist)
        assert sharding.is_sharded(trainer.student.net) == (strategy == "fsdp")
    part = Path(flags["out"]) / "fsdp-resumed"  # the FSDP run interrupted after step 1
    if rank == 0:
        shutil.copytree(Path(flags["out"]) / "fsdp", part)
        shutil.rmtree(part / "checkpoints" / ckpt.step_name(2))
        shutil.rmtree(part / "student")
        (part / "checkpoints" / ckpt.LATEST).write_text(ckpt.step_name(1))
    torch.distributed.barrier()
    _run(flags | {"out": str(part), "strategy": "fsdp", "save_every": 1, "resume": True}, dist, start=1)
    if rank == 0:
        for run in ("ddp", "fsdp", "fsdp-resumed"):
            adapter = Path(flags["out"]) / run / "student" / ADAPTER_DIR / "adapter_model.safetensors"
            adapters[run] = {k: v.numpy() for k, v in load_file(str(adapter)).items()}
    return adapters


@pytest.mark.slow
def test_ddp_and_fsdp_on_two_workers_train_the_adapters_of_one_worker(runs, tmp_path):
    teacher_dir, data, _, _ = runs["sdar"]
    _, one = _run(_flags(data, teacher_dir, tmp_path / "one", max_steps=2, round_every=1))
    two = _flags(data, teacher_dir, tmp_path / "two", max_steps=2, round_every=1, batch_size=2, num_workers=2)
    adapters = run_workers(__file__, "lora_steps_on_a_worker", (two,), tmp_path / "store")[0]
    expected = load_file(str(one / ADAPTER_DIR / "adapter_model.safetensors"))
    resumed = adapters.pop("fsdp-resumed")
    assert all(np.array_equal(resumed[k], adapters["fsdp"][k]) for k in resumed)  # FSDP + LoRA resumes bit for bit
    for strategy, found in adapters.items():
        assert found.keys() == expected.keys()
        worst = max(float(np.abs(found[k] - expected[k].numpy()).max()) for k in found)
        assert worst < 1e-5, (strategy, worst)  # fp32: only the order of the gradient sums differs
