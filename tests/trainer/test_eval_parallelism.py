"""Tokens per forward counted while decoding (AUP in the table, JSON and plot: test_eval_plot.py).

The shipped teacher (`builtin`) is used where the count matters: it stops rows mid-block
and its confident padding is revealed after the stop, so the sampler's reveals differ
from the kept tokens and a count of the wrong thing fails here.
"""

import dataclasses

import pytest

from t3d.dllm import SamplerConfig, load_model, sample
from t3d.dllm.loading import BUILTIN_DIR
from t3d.trainer import evaluate as ev

has_builtin = pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(), reason="shipped teacher not in dllm/builtin/")
PROMPTS, SAMPLES = 4, 2


@pytest.fixture(scope="module")
def teacher():
    model = load_model("builtin")
    prompts = ev.builtin_prompts("test", limit=PROMPTS)
    rows = [ev.encode_prompt(model, p, ev.PromptEncoding()) for p in prompts.prompts for _ in range(SAMPLES)]
    return model, prompts, rows, ev.row_seeds(PROMPTS, SAMPLES, seed=0)


def decoded_record(teacher, setting: SamplerConfig) -> ev.EvalRecord:
    model, prompts, rows, seeds = teacher
    out = ev.decode(model, rows, seeds, setting, batch_size=len(rows), warmup=False)
    return ev.make_record("teacher", setting, prompts, out, ev.judge(prompts, model, out, SAMPLES), SAMPLES)


@has_builtin
@pytest.mark.parametrize("steps", [4, 2, 1])
def test_a_fixed_schedule_reaches_its_nominal_tokens_per_forward_exactly(teacher, steps):
    r = decoded_record(teacher, SamplerConfig(steps_per_block=steps, logits_top_k=0))
    assert r.tokens_per_forward == 4 / steps and r.revealed_tokens == r.forwards * 4 // steps
    assert r.measured_tokens_per_step < r.tokens_per_forward, "rows stop mid-block: the kept tokens are fewer than the reveals"


@has_builtin
def test_the_threshold_strategy_counts_its_reveals(teacher):
    """Reveals counted independently: the same rows decoded without stopping at EOS are identical up to the stop, so
    the positions they reveal before each row's stop step are the reveals of the stopping decode."""
    model, _, rows, seeds = teacher
    setting = SamplerConfig(strategy="threshold", threshold=0.9, logits_top_k=0)
    r = decoded_record(teacher, setting)
    stopped = sample(model, rows, setting, seeds)
    running = sample(model, rows, dataclasses.replace(setting, stop_at_eos=False), seeds)
    before_stop = (running.reveal_step >= 0) & (running.reveal_step < stopped.num_steps[:, None])  # (N, L)
    counted, forwards = int(before_stop.sum()), int(stopped.num_steps.sum())
    assert r.forwards == forwards and r.revealed_tokens == counted
    assert r.tokens_per_forward == counted / forwards > 1.0, "more than one token per forward: an adaptive count, not 1"
    assert counted > r.tokens, "reveals after the stop are counted; the kept response is shorter"
    assert r.tokens_per_step == r.measured_tokens_per_step == r.tokens / forwards, "the old columns are unchanged"
