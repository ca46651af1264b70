"""A student comes out in its teacher's own format: a drop-in for the tools that load the teacher.

Same config.json (model_type, architectures, auto_map untouched), the same tensor names, dtype
and shard layout, the tokenizer, generation config, chat template and upstream .py files; t3d's
own fields in t3d.json. Resume checkpoints keep the training dtype in the same names and layout.
The families' own code (the `-compat` fixtures of ../shared/realckpt) loads each student and
computes the logits t3d computes.
"""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from t3d.dllm import load_model
from t3d.dllm.weights import INDEX
from t3d.trainer import checkpoint as ckpt
from t3d.trainer.config import build_config


def perturb(model, seed=0):
    """Move every weight a little, so a student that were the teacher's files again would be caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)


def save_student(model, base, out):
    cfg = build_config({"model": str(base), "out": str(out)})
    state = {"optimizer": {}, "scheduler": {}, "data": {}, "rng": ckpt.rng_state()}
    checkpoint = ckpt.save_checkpoint(out, 3, model, state, cfg, None, {"block_size": 4})
    return checkpoint, ckpt.export_student(checkpoint, out)


def tensors_of(path):
    """{name: (dtype, file)} of every tensor in a checkpoint directory."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                out[name] = (fh.get_slice(name).get_dtype(), file.name)
    return out


@pytest.mark.parametrize("name", ["sdar", "llada", "dream"])
def test_student_is_a_drop_in_for_its_familys_own_code(real_fixtures, upstream, name, tmp_path):
    base = real_fixtures / name
    model = load_model(base)
    perturb(model)
    checkpoint, student = save_student(model, base, tmp_path / "out")
    for file in base.iterdir():  # every non-weight file as published, byte for byte
        if not file.name.endswith(".safetensors"):
            assert (student / file.name).read_bytes() == file.read_bytes(), file.name
    meta = json.loads((student / "t3d.json").read_text())
    assert meta["family"] == name and meta["block_size"] == 4 and meta["base"]["path"] == str(base.resolve())
    teacher_tensors = tensors_of(base)
    assert tensors_of(student) == teacher_tensors  # same names, dtype (bf16) and files
    assert {n: ("F32", f) for n, (_, f) in teacher_tensors.items()} == tensors_of(checkpoint)  # training dtype
    reloaded = load_model(student)  # no flags
    assert reloaded.family.name == name and reloaded.native
    trained = model.net.state_dict()
    for key, value in reloaded.net.state_dict().items():
        assert torch.equal(value, trained[key].to(torch.bfloat16).float()), key
    exact = load_model(checkpoint).net.state_dict()
    assert all(torch.equal(exact[k], v) for k, v in trained.items() if k in exact)
    net = upstream.net(student, real_fixtures / f"{name}-compat", tmp_path / "compat")
    worst = upstream.parity(reloaded, net)
    assert worst <= 1e-5, f"{name}: max |diff| {worst} between t3d and the family's own code on the student"


def shard(src, dst, parts=2):
    """A copy of checkpoint `src` with its weights split into `parts` files and an index."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    files = [f"model-{i + 1:05d}-of-{parts:05d}.safetensors" for i in range(parts)]
    weight_map = {n: files[i * parts // len(names)] for i, n in enumerate(names)}
    for file in files:
        save_file({n: tensors[n] for n in names if weight_map[n] == file}, str(dst / file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (dst / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return dst


def test_a_sharded_teacher_gives_a_sharded_student_with_the_same_index(teachers, tmp_path):
    base = shard(teachers["bidirectional"], tmp_path / "teacher")
    model = load_model(base)
    perturb(model, seed=1)
    checkpoint, student = save_student(model, base, tmp_path / "out")
    teacher_index = json.loads((base / INDEX).read_text())
    for where in (student, checkpoint):
        index = json.loads((where / INDEX).read_text())
        assert index["weight_map"] == teacher_index["weight_map"], where
        assert not (where / "model.safetensors").exists()
        assert tensors_of(where) == tensors_of(base)
        assert index["metadata"]["total_size"] == teacher_index["metadata"]["total_size"]  # fp32 base: same bytes
    reloaded = load_model(student)
    assert reloaded.family.name == "bidirectional"  # the built-in family, from config.json's t3d_family
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in reloaded.net.state_dict().items())


def test_export_casts_to_the_teachers_dtype_and_updates_the_index(teachers, tmp_path):
    """A bf16 sharded teacher: the fp32 checkpoint's shards become bf16 shards, the index says their size."""
    base = shard(teachers["bidirectional"], tmp_path / "teacher")
    for file in base.glob("*.safetensors"):
        save_file({n: t.to(torch.bfloat16) for n, t in load_file(str(file)).items()}, str(file), metadata={"format": "pt"})
    model = load_model(base)  # float32 on CPU
    checkpoint, student = save_student(model, base, tmp_path / "out")
    assert {d for d, _ in tensors_of(checkpoint).values()} == {"F32"}
    assert {d for d, _ in tensors_of(student).values()} == {"BF16"}
    sizes = {json.loads((p / INDEX).read_text())["metadata"]["total_size"] for p in (checkpoint, student)}
    assert sorted(sizes)[1] == 2 * sorted(sizes)[0]
