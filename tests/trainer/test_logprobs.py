"""Chunked log-probs from hidden states equal the full (B, L, V) computation, values and gradients."""

import pytest
import torch

from t3d.dllm import load_model
from t3d.dllm.tiny import build_checkpoint
from t3d.trainer.logprobs import ResponseLogProbs, linear_logprobs, linear_proposal


def _full(hidden, weight, bias, ids):
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, ids).float()


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_chunked_logprobs_equal_the_full_softmax_with_gradients(with_bias, rows):
    g = torch.Generator().manual_seed(0)
    n, dim, vocab, k = 10, 6, 37, 3
    hidden = torch.randn(n, dim, generator=g, requires_grad=True)
    weight = torch.randn(vocab, dim, generator=g, requires_grad=True)
    bias = torch.randn(vocab, generator=g, requires_grad=True) if with_bias else None
    ids = torch.randint(0, vocab, (n, k), generator=g)
    upstream = torch.randn(n, k, generator=g)
    ours = linear_logprobs(hidden, weight, bias, ids, rows=rows)
    grads = torch.autograd.grad((ours * upstream).sum(), [hidden, weight, *([bias] if with_bias else [])])
    ref = _full(hidden, weight, bias, ids)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [hidden, weight, *([bias] if with_bias else [])])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_proposal_is_the_argmax_and_its_logprob():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(9, 4, generator=g), torch.randn(23, 4, generator=g)
    targets = torch.randint(0, 23, (9,), generator=g)
    prop = linear_proposal(hidden, weight, None, targets, rows=2)
    logp = torch.log_softmax(hidden @ weight.t(), -1)
    assert torch.equal(prop.fake, logp.argmax(-1))
    torch.testing.assert_close(prop.logp_fake, logp.max(-1).values)
    torch.testing.assert_close(prop.logp_target, logp.gather(-1, targets[:, None]).squeeze(-1))
    peaked = linear_proposal(hidden * 1e3, weight, None, targets, 1.0, torch.Generator().manual_seed(0), rows=4)
    assert torch.equal(peaked.fake, prop.fake)  # sampling a near one-hot distribution gives its mode


@pytest.fixture(scope="module")
def shifted_teacher(tmp_path_factory):
    """A Dream-style network (row i - 1 predicts token i): the response rows come from one column earlier."""
    return build_checkpoint(tmp_path_factory.mktemp("shifted") / "m", "shifted", max_position_embeddings=32, seed=3)


@pytest.mark.parametrize("family", ["bidirectional", "block_causal", "shifted"])
def test_fused_head_equals_the_full_logits_route_on_a_real_network(teachers, shifted_teacher, family):
    model = load_model(teachers.get(family, shifted_teacher))
    g = torch.Generator().manual_seed(2)
    b, t, length = 3, 12, 8
    input_ids = torch.randint(3, 60, (b, t), generator=g)
    bias = torch.zeros(b, 1, t, t)
    positions = torch.arange(t).expand(b, t)
    select = torch.rand(b, length, generator=g) < 0.6
    ids = torch.randint(0, model.vocab_size, (int(select.sum()), 2), generator=g)
    results = []
    for fused in (True, False):
        head = ResponseLogProbs(model, fused=fused)
        assert head.fused == fused
        model.net.zero_grad()
        out = head(input_ids, bias, positions, length, select, ids=ids)
        out.sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.net.named_parameters()}))
        with torch.no_grad():
            full = model.logits_with_bias(input_ids, bias, positions)  # (B, T, V) aligned by the family
            expected = torch.log_softmax(full[:, -length:][select], -1).gather(-1, ids)
        torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
    (a, ga), (c, gc) = results
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    for name in ga:
        torch.testing.assert_close(ga[name], gc[name], rtol=1e-4, atol=1e-6, msg=name)
