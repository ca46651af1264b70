"""Two-level reductions over the vocabulary equal torch's one-level ones."""

import pytest
import torch

from t3d.dllm import vocab

# SDAR's vocabulary (1,187 chunks of 128, none short), and sizes with a short last chunk.
SIZES = [(151_936, None), (1_000, 16), (77, 8), (130, 4), (5, 2)]


@pytest.mark.parametrize("size, chunk", SIZES)
def test_argmax_is_torchs_first_maximum(size, chunk):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(6, 3, size, generator=g)
    assert torch.equal(vocab.argmax(x, chunk), x.argmax(dim=-1))
    ties = torch.zeros(2, size)
    ties[:, size // 3] = ties[:, size - 1] = 1.0  # two maxima in different chunks: the first wins
    ties[1, 0] = float("-inf")
    assert torch.equal(vocab.argmax(ties, chunk), ties.argmax(dim=-1))


@pytest.mark.parametrize("size, chunk", SIZES)
@pytest.mark.parametrize("k", [1, 3])
def test_topk_is_torchs_topk(size, chunk, k):
    g = torch.Generator().manual_seed(size + k)
    x = torch.randn(6, 3, size, generator=g)
    x[0, 0, : size // 2] = float("-inf")  # masked ids (the mask token, a filter)
    values, ids = vocab.topk(x, k, chunk)
    top = x.topk(k, dim=-1)
    assert torch.equal(values, top.values) and torch.equal(ids, top.indices)


def test_topk_takes_values_from_one_chunk_when_they_cluster():
    x = torch.full((1, 1000), -5.0)
    x[0, 40:48] = torch.arange(8.0)  # all of the top 8 in one chunk of 128
    values, ids = vocab.topk(x, 8, 16)
    assert ids.tolist() == [list(range(47, 39, -1))] and values.tolist() == [list(range(7, -1, -1))]


@pytest.mark.parametrize("size, chunk", SIZES)
def test_inverse_cdf_equals_the_float64_inverse_cdf(size, chunk):
    g = torch.Generator().manual_seed(size)
    weights = torch.randn(64, size, generator=g).mul(2).softmax(dim=-1)
    weights[:, ::3] = 0.0  # zero weights are never drawn
    u = torch.rand(64, generator=g)
    drawn = vocab.inverse_cdf(weights, u, chunk)
    cdf = weights.double().cumsum(dim=-1)
    target = (u.double() * cdf[:, -1])[:, None]
    exact = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # Rounding of the fp32 partial sums may move a draw only when the target sits within ~1e-6 of a boundary.
    near = ((cdf - target).abs() < 1e-5).any(dim=-1)
    assert torch.equal(drawn[~near], exact[~near])
    assert (weights.gather(-1, drawn[:, None]) > 0).all()


@pytest.mark.parametrize("chunk", [None, 4])
def test_inverse_cdf_never_draws_a_zero_weight_at_the_ends(chunk):
    weights = torch.zeros(4, 40)
    weights[:, 5] = weights[:, 17] = 0.5  # zeros before, between and after the only live ids
    u = torch.tensor([0.0, 1e-9, 1.0 - 2**-24, 1.0])  # 1.0: a float32 uniform that rounded up
    drawn = vocab.inverse_cdf(weights, u, chunk)
    assert drawn.tolist() == [5, 5, 17, 17]
