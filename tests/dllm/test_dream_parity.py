"""t3d's Dream decodes equal Dream's own `diffusion_generate`, token for token, at temperature 0.

The reference is ../shared/realckpt/upstream/dream/generation_utils.py as the `dream-compat`
fixture ships it, called the way its README calls it: a left-padded batch with its
attention mask (Dream then masks the padding out of attention and numbers positions from
each row's first token), the whole response as one block, `steps` over
linspace(1, eps, steps + 1). t3d decodes the same prompts with the `dream` strategy, one
block of max_new_tokens, ranking by each of Dream's three `alg` confidences.

Where t3d differs by design the test accounts for it, as tests/dllm/test_decode_parity.py
does: t3d never proposes the mask token, so Dream's logits hook sets its logit to -inf.
The fixture's lm_head is scaled by 16 (both copies): its random head gives near-uniform
distributions whose entropies tie exactly in float32, and a tie is broken by
`torch.topk` in Dream and by position in t3d, so ties would test the tie-break, not the
decoder. transformers 5 cannot build Dream's default generation config from the model
config, so the test passes a `DreamGenerationConfig` itself.
"""

from __future__ import annotations

import importlib
import shutil

import pytest
import torch

from t3d.dllm import load_model
from t3d.dllm.reveal import dream_schedule
from t3d.dllm.sampling import SamplerConfig, sample

NEW_TOKENS = 8
LENGTHS = (5, 9, 7)  # a left-padded batch
MEASURES = {"maskgit_plus": "probability", "topk_margin": "margin", "entropy": "entropy"}  # Dream's alg -> t3d's


@pytest.fixture(scope="module")
def dream(real_fixtures, upstream, tmp_path_factory):
    """(t3d's model, Dream's own network, Dream's generation_utils module) on a sharper copy of the fixture."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("dream_sharp")
    for name in ("dream", "dream-compat"):
        path = shutil.copytree(real_fixtures / name, root / name)
        weights = load_file(path / "model.safetensors")
        weights["lm_head.weight"] = weights["lm_head.weight"] * 16  # a power of two: exact in bf16
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    net = upstream.net(root / "dream-compat")
    utils = importlib.import_module(type(net).__module__.rsplit(".", 1)[0] + ".generation_utils")
    return load_model(root / "dream"), net, utils


def _prompts(lengths=LENGTHS, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _diffusion_generate(model, net, utils, prompts, alg: str, steps: int) -> list[list[int]]:
    """Dream's own decode of the prompts as one left-padded batch -> the response tokens of each row."""
    width = max(map(len, prompts))
    ids = torch.tensor([[model.pad_id] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = utils.DreamGenerationConfig(
        max_new_tokens=NEW_TOKENS, steps=steps, temperature=0.0, alg=alg, mask_token_id=model.mask_id,
        pad_token_id=model.pad_id, eos_token_id=model.eos_ids[0], bos_token_id=model.pad_id,
    )

    def no_mask_proposals(step, x, logits):
        logits[..., model.mask_id] = float("-inf")
        return logits

    out = net.diffusion_generate(ids, attention_mask=attention, generation_config=config,
                                 generation_logits_hook_func=no_mask_proposals)  # fmt: skip
    return out[:, width:].tolist()


def _t3d(model, prompts, confidence: str, steps: int):
    cfg = SamplerConfig(max_new_tokens=NEW_TOKENS, block_size=NEW_TOKENS, steps_per_block=steps, strategy="dream",
                        confidence=confidence, temperature=0.0, stop_at_eos=False, logits_top_k=0)  # fmt: skip
    return sample(model, prompts, cfg, seeds=list(range(len(prompts))))


@pytest.mark.parametrize("steps", [NEW_TOKENS, NEW_TOKENS // 2, NEW_TOKENS // 4])  # one token per step, fewer steps
@pytest.mark.parametrize("alg", list(MEASURES))
def test_dream_matches_diffusion_generate(dream, alg, steps):
    model, net, utils = dream
    prompts = _prompts()
    out = _t3d(model, prompts, MEASURES[alg], steps)
    assert out.tokens.tolist() == _diffusion_generate(model, net, utils, prompts, alg, steps)
    # Dream's steps that reveal nothing (its first, at one token per step) are skipped, not run.
    assert (out.num_steps == len(dream_schedule(NEW_TOKENS, steps))).all()


def test_the_measures_rank_differently_on_this_fixture(dream):
    """Otherwise the parity above could not tell a measure that is ignored from one that is applied."""
    model, _, _ = dream
    prompts = _prompts()
    decodes = {name: _t3d(model, prompts, name, NEW_TOKENS // 2).tokens.tolist() for name in MEASURES.values()}
    assert len({str(d) for d in decodes.values()}) == len(decodes), decodes


def test_dream_schedule_counts_as_dream_does():
    """Hand-checked against `diffusion_generate`'s history: 8 steps over 8 tokens reveal 0, 1, 1, 1, 1, 1, 1, 2."""
    assert dream_schedule(8, 8) == [1, 1, 1, 1, 1, 1, 2]
    assert dream_schedule(8, 4) == [1, 2, 2, 3] and dream_schedule(8, 1) == [8]
    assert all(sum(dream_schedule(n, s)) == n for n in (4, 8, 16, 32) for s in range(1, n + 1))
