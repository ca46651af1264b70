"""The shipped teacher loads through the project's loader and reaches its stated quality.

The numbers checked are the ones `t3d-pretrain` measured and wrote beside the weights
(training.json, the source of MODEL_CARD.md's table), on a smaller fixed-seed sample.
"""

import json
import math

import numpy as np
import pytest
import torch

from t3d.dllm import SamplerConfig, load_model, sample
from t3d.dllm.loading import BUILTIN_DIR
from t3d.dllm.task import BuiltinTask

SAMPLES_PER_PROMPT = 2  # 72 test prompts -> 144 responses per setting, a few seconds on CPU


@pytest.fixture(scope="module")
def teacher():
    return load_model("builtin")


@pytest.fixture(scope="module")
def task():
    return BuiltinTask(seed=0)


@pytest.fixture(scope="module")
def stated():
    """Validity per steps_per_block / temperature as measured when the checkpoint was made."""
    rows = json.loads((BUILTIN_DIR / "training.json").read_text())["calibration"]
    return {(r["steps_per_block"], r["temperature"]): r["validity"] for r in rows}


def _validity(teacher, task, steps_per_block, temperature, seed=2024):
    prompts = [p for _ in range(SAMPLES_PER_PROMPT) for p in task.prompts("test")]
    cfg = SamplerConfig(steps_per_block=steps_per_block, temperature=temperature, logits_top_k=0)
    out = sample(teacher, prompts, cfg, [seed + i for i in range(len(prompts))])
    return float(np.mean([task.is_valid(p, r) for p, r in zip(prompts, out.tokens)])), len(prompts)


def _three_sigma(p, n):
    """Three binomial standard deviations of a validity rate p measured on n responses:
    a teacher that truly has rate p falls below p - 3 sigma with probability ~0.1%."""
    p = min(max(p, 0.01), 0.99)
    return 3 * math.sqrt(p * (1 - p) / n)


def test_checkpoint_is_complete_and_small():
    names = {p.name for p in BUILTIN_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "MODEL_CARD.md"} <= names
    assert sum(p.stat().st_size for p in BUILTIN_DIR.iterdir()) < 10 * 2**20
    config = json.loads((BUILTIN_DIR / "config.json").read_text())
    assert config["t3d_family"] == "bidirectional" and config["t3d_block_size"] == 4 and config["t3d_max_new_tokens"] == 16


def test_teacher_matches_the_task(teacher, task):
    assert teacher.name == "builtin" and teacher.family.name == "bidirectional"
    assert (teacher.mask_id, teacher.pad_id, teacher.eos_id) == (task.mask_id, task.pad_id, task.eos_id)
    assert teacher.vocab_size == len(task.vocabulary) and teacher.block_size == 4
    assert teacher.tokenizer("c3 c1 c5")["input_ids"] == task.encode("c3 c1 c5")


def test_attention_is_bidirectional(teacher, task):
    ids = torch.tensor([task.encode("c3 c1 c5") + [task.mask_id] * 16])
    changed = ids.clone()
    changed[0, -1] = task.eos_id
    with torch.no_grad():
        a, b = teacher.logits(ids), teacher.logits(changed)
    assert not torch.allclose(a[0, :-1], b[0, :-1]), "a later token must reach earlier positions"


def test_one_token_per_step_reaches_the_stated_validity(teacher, task, stated):
    validity, n = _validity(teacher, task, steps_per_block=4, temperature=1.0)
    floor = stated[(4, 1.0)] - _three_sigma(stated[(4, 1.0)], n)
    assert validity >= max(floor, 0.95 - _three_sigma(0.95, n)), f"validity {validity:.3f} on {n} responses"


def test_one_step_per_block_breaks_words(teacher, task, stated):
    validity, n = _validity(teacher, task, steps_per_block=1, temperature=1.0)
    expected = stated[(1, 1.0)]
    assert 0.2 <= expected <= 0.6, "the card's one-step-per-block validity is in the designed window"
    assert abs(validity - expected) <= _three_sigma(expected, n), f"validity {validity:.3f} vs stated {expected:.3f}"


def test_greedy_one_step_per_block_fails(teacher, task):
    """DDO's fake answers are the reference's one-shot argmax: they must be mostly wrong."""
    validity, _ = _validity(teacher, task, steps_per_block=1, temperature=0.0)
    assert validity <= 0.1
