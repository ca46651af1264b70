"""The fused head's chunking: any chunk size gives the same log-probs and gradients; autocast runs every matmul in its dtype."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from t3d.trainer.logprobs import CHUNK_BYTES, chunk_rows, linear_logprobs

N, H, V, K = 13, 8, 41, 2


def problem(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, V, (N, K), generator=g)
    upstream = torch.randn(N, K, generator=g, dtype=torch.float64)
    return hidden, weight, bias, ids, upstream


def test_every_chunk_size_gives_the_full_softmax_and_its_gradients_in_float64():
    hidden, weight, bias, ids, upstream = problem()
    full = torch.log_softmax(hidden @ weight.t() + bias, -1).gather(-1, ids)  # (N, K) float64
    expected = torch.autograd.grad((full * upstream).sum(), [hidden, weight, bias])
    for rows in (1, 2, 5, N - 1, N, None):  # None: the memory budget's size (here one chunk)
        out = linear_logprobs(hidden, weight, bias, ids, rows=rows)
        grads = torch.autograd.grad((out.double() * upstream).sum(), [hidden, weight, bias])
        torch.testing.assert_close(out.double(), full, rtol=1e-7, atol=1e-7, msg=f"rows={rows}")  # rounded to float32
        for name, a, b in zip(("hidden", "weight", "bias"), grads, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"d{name}, rows={rows}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_rows_fill_the_memory_budget(dtype):
    """A chunk's float32 logits and their compute-dtype copy fit CHUNK_BYTES; one row more would not."""
    per_row = 4 + torch.empty((), dtype=dtype).element_size()
    for vocab in (512, 32_000, 151_936):
        rows = chunk_rows(vocab, dtype)
        assert rows * vocab * per_row <= CHUNK_BYTES < (rows + 1) * vocab * per_row
    assert chunk_rows(151_936) == 220  # not the 55 rows of a fixed 8 M-element chunk


class MatmulDtypes(TorchDispatchMode):
    """The dtypes of every matrix product dispatched while active."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_, torch.ops.aten.bmm):
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def test_under_autocast_all_four_matmuls_run_in_its_dtype_and_the_backward_matches_the_forward():
    """fp32 master weights under bf16 autocast: the same numbers as the head run on bf16 copies outside autocast."""
    hidden, weight, _, ids, upstream = problem(torch.float32)
    seen = MatmulDtypes()
    with seen, torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_logprobs(hidden, weight, None, ids, rows=4)
        grads = torch.autograd.grad((out * upstream.float()).sum(), [hidden, weight])
    assert seen.dtypes and set(seen.dtypes) == {torch.bfloat16}, seen.dtypes
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    ref = linear_logprobs(hb, wb, None, ids, rows=4)
    ref_grads = torch.autograd.grad((ref * upstream.float()).sum(), [hb, wb])
    assert torch.equal(out, ref)
    assert torch.equal(grads[0].bfloat16(), ref_grads[0]) and torch.equal(grads[1].bfloat16(), ref_grads[1])


def test_a_kept_softmax_saves_the_backward_matmul_and_changes_no_bit(monkeypatch):
    """Under KEEP_BYTES the backward reads the forward's softmax (3 matmuls, not 4): the same log-probs and gradients."""
    from t3d.trainer import logprobs

    results = []
    for keep in (0, logprobs.KEEP_BYTES):
        monkeypatch.setattr(logprobs, "KEEP_BYTES", keep)
        hidden, weight, bias, ids, upstream = problem(torch.float32)
        seen = MatmulDtypes()
        with seen:
            out = linear_logprobs(hidden, weight, bias, ids, rows=4)
            grads = torch.autograd.grad((out * upstream.float()).sum(), [hidden, weight, bias])
        results.append((out, grads, len(seen.dtypes)))
    (out0, grads0, mm0), (out1, grads1, mm1) = results
    chunks = -(-N // 4)
    assert (mm0, mm1) == (4 * chunks, 3 * chunks)
    assert torch.equal(out0, out1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))
