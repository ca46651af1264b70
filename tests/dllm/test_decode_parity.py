"""t3d's sampler against the families' own decoders, token for token, with greedy proposals.

SDAR: `block_diffusion_generate` (../shared/realckpt/upstream/sdar/generate.py) with
`low_confidence_static`, blocks of 4, one token per step. Its sampling helper is replaced
by an argmax that returns the model's probability of the proposal (its own top_k=1 path
makes every confidence 1 and the reveal order arbitrary).
LLaDA: `generate` (upstream/llada/generate.py) at temperature 0, low_confidence,
semi-autoregressive blocks. Neither stops at EOS: t3d runs with `stop_at_eos=False`.

Where t3d differs by design the test accounts for it: t3d never proposes the mask token,
so the reference network's mask logit is set to -inf (then both renormalise the same way).
"""

from __future__ import annotations

import pytest
import torch

from t3d.dllm import load_model
from t3d.dllm.sampling import SamplerConfig, sample

BLOCK = 4


class _NoMaskProposals(torch.nn.Module):
    """The reference network with the mask token's logit at -inf (t3d never proposes it)."""

    def __init__(self, net: torch.nn.Module, mask_id: int) -> None:
        super().__init__()
        self.net, self.mask_id = net, mask_id

    @property
    def device(self):
        return next(self.net.parameters()).device

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        out.logits[..., self.mask_id] = float("-inf")
        return out


def _greedy_with_probability(logits, temperature=1.0, top_k=0, top_p=1.0):
    probs = torch.softmax(logits.float(), dim=-1)  # (B, L, V)
    token = probs.argmax(dim=-1)
    return token, probs.gather(-1, token[..., None]).squeeze(-1)


def _prompts(lengths, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("prompt_len", [8, 6, 5])  # a multiple of the block and not
def test_sdar_matches_block_diffusion_generate(real_fixtures, upstream_net, upstream_decoder, prompt_len):
    decoder = upstream_decoder("sdar")
    decoder.sample_with_temperature_topk_topp = _greedy_with_probability
    model = load_model(real_fixtures / "sdar")
    reference = _NoMaskProposals(upstream_net("sdar"), model.mask_id)
    new_tokens = 16
    cfg = SamplerConfig(max_new_tokens=new_tokens, block_size=BLOCK, steps_per_block=BLOCK, temperature=0.0,
                        stop_at_eos=False, logits_top_k=0)
    prompt = _prompts([prompt_len])[0]
    decoded = new_tokens - prompt_len % BLOCK  # t3d keeps blocks whole at absolute positions
    theirs = decoder.block_diffusion_generate(
        reference, {"input_ids": torch.tensor([prompt])}, mask_id=model.mask_id, gen_length=decoded,
        block_length=BLOCK, denoising_steps=BLOCK, remasking_strategy="low_confidence_static",
    )[0, prompt_len:]
    out = sample(model, [prompt], cfg, seeds=[0])
    assert out.tokens[0, :decoded].tolist() == theirs.tolist()
    assert (out.reveal_step[0, decoded:] == -1).all(), "columns past the last whole block stay padding"


@pytest.mark.parametrize("name", ["llada", "llada_v2"])
@pytest.mark.parametrize("steps_per_block", [4, 2])
def test_llada_matches_its_generate(real_fixtures, upstream_net, upstream_decoder, name, steps_per_block):
    decoder = upstream_decoder("llada")
    model = load_model(real_fixtures / name)
    reference = _NoMaskProposals(upstream_net(name), model.mask_id)
    new_tokens = 12
    cfg = SamplerConfig(max_new_tokens=new_tokens, block_size=BLOCK, steps_per_block=steps_per_block,
                        temperature=0.0, stop_at_eos=False, logits_top_k=0)
    prompts = _prompts([5, 9])
    out = sample(model, prompts, cfg, seeds=[0, 1])  # one batch, left-padded
    for i, prompt in enumerate(prompts):
        theirs = decoder.generate(
            reference, torch.tensor([prompt]), steps=steps_per_block * new_tokens // BLOCK, gen_length=new_tokens,
            block_length=BLOCK, temperature=0.0, remasking="low_confidence", mask_id=model.mask_id,
        )[0, len(prompt):]
        assert out.tokens[i].tolist() == theirs.tolist(), f"prompt {i}"
