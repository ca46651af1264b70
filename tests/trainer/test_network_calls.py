"""Only `DiffusionLM` (dllm/model.py) calls the network: decoding, training and t3d-pretrain all go through it.

So a family's attention mask, logit alignment and LM-head handling live in one place.
Two checks, each shown to fail on a direct call:
- at run time, every call of a transformers network or its trunk (`PreTrainedModel`)
  while decoding (each cache mode), training (each objective; fused head and full
  logits) and pretraining is traced to the nearest frame outside torch, transformers
  and the standard library, which must be in dllm/model.py;
- in the source, no call of `net(...)`, `x.net(...)`, `net.model(...)` or
  `net.forward(...)` sits anywhere in the package but dllm/model.py (paths no test runs).
"""

from __future__ import annotations

import ast
import collections
import contextlib
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import t3d.dllm.model
from t3d.dllm import SamplerConfig, load_model, sample
from t3d.dllm.task import BuiltinTask
from t3d.tools import pretrain
from t3d.trainer.config import build_config
from t3d.trainer.logprobs import ResponseLogProbs
from t3d.trainer.loop import build_trainer, train_step

MODEL_PY = Path(t3d.dllm.model.__file__).resolve()
SOURCE_ROOT = MODEL_PY.parents[1]  # the repository: dllm/, trainer/, pipeline/, ... side by side
PACKAGES = ("dllm", "trainer", "pipeline", "storage_schemas", "tools", "scheduler")
LIBRARIES = tuple(str(Path(m.__file__).resolve().parent) for m in (torch, transformers)) + (
    str(Path(sysconfig.get_paths()["stdlib"]).resolve()),
)


def _caller(frame) -> Path | None:
    """The nearest frame outside torch, transformers and the standard library (who asked for the call)."""
    while frame is not None:
        path = str(Path(frame.f_code.co_filename).resolve())
        if not path.startswith(LIBRARIES):
            return Path(path)
        frame = frame.f_back
    return None


@contextlib.contextmanager
def network_callers():
    """Counts calls of every transformers network or trunk module by the file that made them."""
    callers: collections.Counter = collections.Counter()

    def hook(module, args):
        if isinstance(module, transformers.PreTrainedModel):
            callers[_caller(sys._getframe(1))] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield callers
    finally:
        handle.remove()


def _only_through_the_model(callers: collections.Counter) -> None:
    assert callers, "nothing called the network: the scenario did not run"
    assert set(callers) == {MODEL_PY}, f"the network was called from outside dllm/model.py: {dict(callers)}"


# ----- at run time ----------------------------------------------------------------------------


@pytest.mark.parametrize("family, cache", [("bidirectional", "none"), ("bidirectional", "prefix"),
                                           ("bidirectional", "dual"), ("block_causal", "none"),  # auto: the exact cache
                                           ("block_causal", "auto")])  # fmt: skip
def test_decoding_calls_the_network_through_diffusionlm(teachers, kit, family, cache):
    model = load_model(teachers[family])
    cfg = SamplerConfig(max_new_tokens=8, block_size=4, steps_per_block=2, cache=cache)
    with network_callers() as callers:
        sample(model, kit.random_prompts(3, seed=1), cfg, [0, 1, 2])
    _only_through_the_model(callers)


@pytest.mark.parametrize("loss", ["t3d", "fkl"])
def test_training_calls_the_network_through_diffusionlm(kit, teachers, datasets, tmp_path, loss):
    cfg = build_config(kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path, loss=loss, grad_accum=2))
    trainer = build_trainer(cfg, log=lambda *a: None)
    with network_callers() as callers:
        metrics = train_step(trainer, [trainer.loader.next_batch() for _ in range(2)])
    assert np.isfinite(metrics["loss"])
    _only_through_the_model(callers)


def test_the_full_logits_route_calls_the_network_through_diffusionlm(teachers):
    model = load_model(teachers["bidirectional"])
    b, t, length = 2, 10, 6
    inputs = (torch.randint(3, 60, (b, t)), torch.zeros(b, 1, t, t), torch.arange(t).expand(b, t), length)
    select = torch.ones(b, length, dtype=torch.bool)
    with network_callers() as callers:
        ResponseLogProbs(model, fused=False)(*inputs, select, ids=torch.zeros(b * length, 1, dtype=torch.long))
        ResponseLogProbs(model, fused=False)(*inputs, select, targets=torch.zeros(b * length, dtype=torch.long))
    _only_through_the_model(callers)


def test_pretraining_the_builtin_teacher_calls_the_network_through_diffusionlm():
    task = BuiltinTask(seed=0)
    net = pretrain.build_network(task, pretrain.TeacherNetConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                                 intermediate_size=64), seed=0)  # fmt: skip
    model = pretrain.as_model(net, task)
    cfg = pretrain.TeacherTrainConfig(steps=2, batch_size=8, warmup_steps=1)
    batch = pretrain.make_batch(task, task.prompts("train"), cfg, np.random.default_rng(0))
    with network_callers() as callers:
        pretrain.check_bidirectional(model, task)
        pretrain.train_step(model, pretrain.build_optimizer(net, cfg), batch, cfg.grad_clip)
    _only_through_the_model(callers)


def test_the_run_time_check_catches_a_direct_call(teachers):
    model = load_model(teachers["bidirectional"])
    ids = torch.randint(3, 60, (1, 6))
    with network_callers() as callers:
        model.logits(ids)
        model.net(input_ids=ids)  # what the rule forbids outside dllm/model.py
    assert set(callers) == {MODEL_PY, Path(__file__).resolve()}
    with pytest.raises(AssertionError, match="outside dllm/model.py"):
        _only_through_the_model(callers)


# ----- in the source -----------------------------------------------------------------------


def _names_a_network(node: ast.expr) -> bool:
    """`net`, `x.net`, `x.ref_net`: an expression that by its name holds a network."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "net" or name.endswith("_net")


def direct_calls(source: str) -> list[int]:
    """Lines that call a network: `net(...)`, `x.net(...)`, `net.model(...)`, `net.forward(...)`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        trunk = isinstance(func, ast.Attribute) and func.attr in ("model", "forward", "__call__") and _names_a_network(func.value)
        if _names_a_network(func) or trunk:
            lines.append(node.lineno)
    return lines


def test_no_source_file_but_dllm_model_calls_the_network():
    found = {}
    for package in PACKAGES:
        for path in sorted((SOURCE_ROOT / package).rglob("*.py")):
            if path.resolve() != MODEL_PY and (lines := direct_calls(path.read_text())):
                found[str(path.relative_to(SOURCE_ROOT))] = lines
    assert not found, f"calls of the network outside dllm/model.py (go through DiffusionLM): {found}"


@pytest.mark.parametrize("call", ["model.net(input_ids=x)", "net(x)", "self.net.model(input_ids=x)",
                                  "trainer.ref_net(x)", "net.forward(x)"])  # fmt: skip
def test_the_source_check_catches_a_direct_call(call):
    assert direct_calls(f"def f(model, net, self, trainer, x):\n    return {call}\n") == [2]
    assert direct_calls("def f(model, x):\n    return model.logits(x)\n") == []
