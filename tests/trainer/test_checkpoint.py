"""Checkpoints: Hugging Face format, atomic publication, pruning, the `latest` pointer."""

import numpy as np
import torch

from t3d.dllm import load_model
from t3d.trainer import checkpoint as ckpt
from t3d.trainer.config import build_config
from t3d.trainer.loop import train


def test_checkpoints_are_hf_models_and_old_ones_are_pruned(kit, teachers, datasets, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    root = out / "checkpoints"
    root.mkdir(parents=True)
    (root / ".tmp-step-0000001-999").mkdir()  # a save that crashed half-way: never read, removed
    cfg = build_config(kit.flags(datasets["bidirectional"], teachers["bidirectional"], out, max_steps=4,
                                 save_every=1, keep_checkpoints=2))  # fmt: skip
    result = train(cfg, log=lambda *a: None)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", ckpt.step_name(3), ckpt.step_name(4)]
    assert ckpt.latest_checkpoint(out).name == ckpt.step_name(4)
    state = ckpt.load_trainer_state(root / ckpt.step_name(4))
    assert state["step"] == 4 and state["data"]["rows_taken"] == 4 * cfg.train.batch_size  # 4 steps of one micro-batch
    assert {"optimizer", "scheduler", "rng"} <= set(state)
    hf = AutoModelForCausalLM.from_pretrained(result.student, local_files_only=True)
    ours = load_model(result.student)
    for (name, a), b in zip(hf.state_dict().items(), ours.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert ours.family.name == "bidirectional" and ours.mask_id == load_model(teachers["bidirectional"]).mask_id
    end = kit.weights(result.model.net)
    assert all(np.array_equal(end[k], v) for k, v in kit.weights(result.student).items())
