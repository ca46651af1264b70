"""Rollout throughput: t3d's sampler against a bare KV-cached block loop, on CPU.

    python benchmarks/rollout_throughput.py [--lengths 64,256,1024] [--threads 1]

A Qwen3-shaped random-weight model at SDAR's vocabulary (151,936), block-causal with
SDAR's absolute blocks, hidden 256, 2 layers (so that L = 1024 runs in minutes here),
batch 8, prompts of 64 tokens, blocks of 4, one token per step, temperature 1, top-k
log-probs at k = 8 recorded (what t3d-collect stores), no EOS stop (every row decodes L).
For each response length L it times
- `t3d`: `sample` with its default exact KV cache;
- `bare_cached_loop`: the limit, written here in plain torch/transformers the way SDAR's
  `block_diffusion_generate` decodes: prefill, per step the block's 4 tokens over a
  `DynamicCache` (cropped after), softmax + argmax (greedy: the cheapest proposal;
  `torch.multinomial` over 152k ids costs more than t3d's whole sampler on CPU) + top-1
  reveal, one KV-storing forward per finished block; no trajectory recording;
- `t3d_uncached`: `sample` with cache "none" (the whole visible sequence every step);
- `previous_sampler`: the sampler before the engine (git ca3a2f1, per-row CPU Gumbel
  noise over the vocabulary, LM head on every position), when git can show it.
The uncached paths grow with L (quadratically) and run only up to --slow-max-len
(the previous sampler, ~1 s a step here, up to --previous-max-len).
`network_share` is the time inside the network's forward (hooks) over the total;
`outside_network_share` = 1 - that: everything the sampler adds.
Then, for a bidirectional model of the same shape, the three cache modes of `sample`; and,
at a real size (Qwen3-0.6B: hidden 1024, 28 layers, same vocabulary), t3d against the
bare loop at a short L, where the network, not the sampler, is the cost.
At the real size, `engine_vs_replay` is the engine's speed over a replay of its own
network work: every matmul and attention kernel that one engine run dispatched
(recorded once with a dispatch mode), run back to back on fresh tensors of the same
shapes, strides and dtypes. The gap is what runs besides those kernels: K/V copies,
masks, gathers, the sampler. Engine and replay runs alternate and medians are kept; the
ratio is of process CPU time (one torch thread), which other processes on a shared
machine disturb far less than wall time.
Prints one JSON object. Targets (issue 10): t3d >= 0.9x the bare loop at every L;
tok/s at L=1024 >= 0.8x tok/s at L=64; outside the network <= 5 %. Issue 21: at the
Qwen3-0.6B shape (L=64, `--real-shape-length 64`), engine >= 0.9x the replay.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from t3d.dllm.families import get_family
from t3d.dllm.model import DiffusionLM
from t3d.dllm.sampling import SamplerConfig, sample

VOCAB, MASK_ID, PAD_ID, EOS_ID = 151_936, 151_669, 151_643, 151_645
BATCH, PROMPT, BLOCK = 8, 64, 4
PREVIOUS_SAMPLER = "ca3a2f1"


SMALL = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=768)
QWEN3_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072)


def build_net(seed: int = 0, shape: dict = SMALL) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=VOCAB, max_position_embeddings=2048, tie_word_embeddings=False, **shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def wrap(net: torch.nn.Module, family) -> DiffusionLM:
    return DiffusionLM(
        net=net, family=family, mask_id=MASK_ID, pad_id=PAD_ID, eos_id=EOS_ID, vocab_size=VOCAB, max_length=2048,
        name="bench", fingerprint="0", path="-", block_size=BLOCK,
    )


class NetworkClock:
    """Seconds spent inside the network's trunk and LM head (CPU: no asynchrony to account for).

    The two are clocked apart because a cache prefill or commit runs the trunk alone.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        self.seconds, self._start = 0.0, 0.0
        parts = [net.model, net.get_output_embeddings()] if isinstance(getattr(net, "model", None), torch.nn.Module) else [net]
        self._hooks = [h for part in parts for h in (part.register_forward_pre_hook(self._pre), part.register_forward_hook(self._post))]

    def _pre(self, *_):
        self._start = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._start

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def timed(net, fn) -> dict:
    clock = NetworkClock(net)
    try:
        tic, cpu = time.perf_counter(), time.process_time()
        tokens = fn()
        total, cpu = time.perf_counter() - tic, time.process_time() - cpu
    finally:
        clock.close()
    return {
        "seconds": round(total, 3), "cpu_seconds": round(cpu, 3), "tok_s": round(tokens / total, 1),
        "network_share": round(clock.seconds / total, 4), "outside_network_share": round(1 - clock.seconds / total, 4),
    }


def prompts_and_seeds(n: int = BATCH) -> tuple[list[list[int]], list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 150_000, (PROMPT,), generator=g).tolist() for _ in range(n)], list(range(n))


def config(length: int, **kw) -> SamplerConfig:
    return SamplerConfig(
        max_new_tokens=length, block_size=BLOCK, steps_per_block=BLOCK, temperature=1.0, logits_top_k=8,
        stop_at_eos=False, **kw,
    )


@torch.no_grad()
def bare_cached_loop(net: torch.nn.Module, prompts: list[list[int]], length: int, steps: int = BLOCK, block: int = BLOCK) -> int:
    """The limit: SDAR's decoding loop in plain transformers (equal-length prompts, absolute blocks).

    `steps` denoising steps per block, each revealing the block // steps most confident masks.
    """
    from transformers import DynamicCache

    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    x = torch.tensor(prompts, device=device)  # (N, P)
    n, p = x.shape
    total = p + length
    blocks = torch.arange(total, device=device) // block
    keep = blocks[None, :] <= blocks[:, None]  # (T, T) block-causal
    bias = torch.zeros(total, total, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)
    bias = bias[None, None].expand(n, 1, -1, -1)
    pos = torch.arange(total, device=device)[None, :].expand(n, -1)
    cache = DynamicCache()
    net(input_ids=x, attention_mask=bias[:, :, :p, :p], position_ids=pos[:, :p], past_key_values=cache, use_cache=True)
    out = torch.full((n, length), MASK_ID, device=device)
    per_step = block // steps
    for start in range(p, total, block):
        cur = out[:, start - p : start - p + block]  # (N, B) a view: reveals land in `out`
        sl = slice(start, start + block)
        for _ in range(steps):
            logits = net(input_ids=cur, attention_mask=bias[:, :, sl, : start + block], position_ids=pos[:, sl],
                         past_key_values=cache, use_cache=True).logits  # (N, B, V)
            cache.crop(-block)
            logits[..., MASK_ID] = float("-inf")
            probs = logits.float().softmax(dim=-1)
            x0 = probs.argmax(dim=-1)  # (N, B) greedy: the least work a proposal can cost
            conf = probs.gather(-1, x0[..., None]).squeeze(-1).masked_fill(cur != MASK_ID, -1.0)
            pick = conf.topk(per_step, dim=1).indices  # (N, k) most confident masks
            cur.scatter_(1, pick, x0.gather(1, pick))
        net(input_ids=cur, attention_mask=bias[:, :, sl, : start + block], position_ids=pos[:, sl],
            past_key_values=cache, use_cache=True)  # store the finished block
    return n * length


def load_previous_sampler():
    """The sampler as it was before the engine, from git, or None."""
    try:
        source = subprocess.run(["git", "show", f"{PREVIOUS_SAMPLER}:dllm/sampling.py"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).resolve().parent).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="t3d-prev-")) / "previous_sampling.py"
    path.write_text(source.replace('model.family.name == "block_causal"', "model.family.block_causal"))
    spec = importlib.util.spec_from_file_location("previous_sampling", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def block_causal_rows(net, lengths: list[int], slow_max: int, previous_max: int) -> list[dict]:
    model = wrap(net, get_family("sdar"))
    prompts, seeds = prompts_and_seeds()
    previous = load_previous_sampler()
    rows = []
    for length in lengths:
        row = {"L": length, "batch": BATCH}
        sample(model, prompts[:2], config(BLOCK), seeds[:2])  # warm-up
        row["t3d"] = timed(net, lambda: sample(model, prompts, config(length), seeds).response_length.sum())
        row["bare_cached_loop"] = timed(net, lambda: bare_cached_loop(net, prompts, length))
        row["t3d_vs_bare"] = round(row["t3d"]["tok_s"] / row["bare_cached_loop"]["tok_s"], 3)
        if length <= slow_max:
            row["t3d_uncached"] = timed(net, lambda: sample(model, prompts, config(length, cache="none"), seeds).response_length.sum())
            if previous is not None and length <= previous_max:
                row["previous_sampler"] = timed(net, lambda: previous.sample(model, prompts, config(length), seeds).response_length.sum())
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


REPLAYED = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
})  # fmt: skip
"""The kernels a replay runs: matrix products and attention, the network's work proper."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A recorded kernel argument: what a replay needs to make a tensor like it."""

    shape: tuple
    stride: tuple
    dtype: torch.dtype


class KernelCalls(TorchDispatchMode):
    """Every matmul and attention kernel dispatched while active, as (op, argument specs)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in REPLAYED:
            spec = lambda x: TensorSpec(tuple(x.shape), x.stride(), x.dtype) if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.calls.append((func, tree_map(spec, args), tree_map(spec, kwargs)))
        return func(*args, **kwargs)


def replay_seconds(calls: list) -> float:
    """Process CPU seconds of running the recorded kernels back to back on fresh tensors (one per distinct
    shape, stride and dtype)."""
    pool: dict = {}

    def build(x):
        if not isinstance(x, TensorSpec):
            return x
        if x not in pool:
            size = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride))
            pool[x] = torch.randn(size).to(x.dtype).as_strided(x.shape, x.stride)
        return pool[x]

    built = [(f, tree_map(build, a), tree_map(build, k)) for f, a, k in calls]
    tic = time.process_time()
    for func, args, kwargs in built:
        func(*args, **kwargs)
    return time.process_time() - tic


def real_shape_row(length: int, layers: int = QWEN3_06B["num_hidden_layers"], repeats: int = 3, bare_loop: bool = True) -> dict:
    """t3d against the bare loop and against a replay of its own kernels on a Qwen3-0.6B-shaped model."""
    net = build_net(shape=QWEN3_06B | {"num_hidden_layers": layers})
    model = wrap(net, get_family("sdar"))
    prompts, seeds = prompts_and_seeds()
    run = lambda: sample(model, prompts, config(length), seeds).response_length.sum()  # noqa: E731
    sample(model, prompts[:2], config(BLOCK), seeds[:2])  # warm-up
    with torch.no_grad(), KernelCalls() as recorded:
        run()
    row = {"shape": "Qwen3-0.6B", "layers": layers, "L": length, "batch": BATCH,
           "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1), "kernels": len(recorded.calls)}  # fmt: skip
    engine, replay, bare = [], [], []
    for _ in range(repeats):  # alternating, so a load spike hits all three alike
        engine.append(timed(net, run))
        replay.append(replay_seconds(recorded.calls))
        if bare_loop:
            bare.append(timed(net, lambda: bare_cached_loop(net, prompts, length)))
    row["t3d"] = min(engine, key=lambda r: r["seconds"])
    row["replay_cpu_seconds"] = round(statistics.median(replay), 3)
    row["engine_vs_replay"] = round(statistics.median(r / e["cpu_seconds"] for r, e in zip(replay, engine)), 3)
    row["engine_vs_replay_each"] = [round(r / e["cpu_seconds"], 3) for r, e in zip(replay, engine)]
    if bare:
        row["bare_cached_loop"] = min(bare, key=lambda r: r["seconds"])
        row["t3d_vs_bare"] = round(statistics.median(b["seconds"] / e["seconds"] for b, e in zip(bare, engine)), 3)
    print(json.dumps(row), file=sys.stderr)
    return row


def bidirectional_rows(net, lengths: list[int]) -> list[dict]:
    model = wrap(net, get_family("bidirectional"))
    prompts, seeds = prompts_and_seeds()
    rows = []
    for length in lengths:
        row = {"L": length, "batch": BATCH}
        for mode in ("none", "prefix", "dual"):
            row[mode] = timed(net, lambda: sample(model, prompts, config(length, cache=mode), seeds).response_length.sum())
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def machine(args) -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": args.threads, "load_average_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="64,256,1024", help="response lengths L (multiples of 4)")
    parser.add_argument("--slow-max-len", type=int, default=256, help="longest L for the two uncached paths")
    parser.add_argument("--previous-max-len", type=int, default=64, help="longest L for the previous sampler (~1 s a step)")
    parser.add_argument("--bidirectional-lengths", default="64,256", help="L for the cache modes of a bidirectional model")
    parser.add_argument("--real-shape-length", type=int, default=16, help="L for the Qwen3-0.6B-shaped row (0: skip it)")
    parser.add_argument("--real-shape-layers", type=int, default=28, help="layers of the Qwen3-0.6B-shaped model (28: as published)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating engine / replay / bare runs at the real shape")
    parser.add_argument("--real-shape-only", action="store_true", help="only the Qwen3-0.6B-shaped row")
    parser.add_argument("--no-real-shape-bare", dest="real_shape_bare", action="store_false",
                        help="leave the bare loop out of the Qwen3-0.6B-shaped row (it costs two engine runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.real_shape_only:
        print(json.dumps({"machine": machine(args), "real_shape": real_shape_row(args.real_shape_length, args.real_shape_layers, args.repeats, args.real_shape_bare)}, indent=1))
        return
    net = build_net()
    lengths = [int(v) for v in args.lengths.split(",")]
    block_rows = block_causal_rows(net, lengths, args.slow_max_len, args.previous_max_len)
    by_len = {r["L"]: r["t3d"]["tok_s"] for r in block_rows}
    result = {
        "machine": machine(args),
        "model": {"shape": "Qwen3", "vocab": VOCAB, "hidden": SMALL["hidden_size"], "layers": SMALL["num_hidden_layers"], "heads": 4, "kv_heads": 2,
                  "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1)},
        "workload": {"batch": BATCH, "prompt": PROMPT, "block": BLOCK, "tokens_per_step": 1, "temperature": 1.0, "logits_top_k": 8},
        "block_causal": block_rows,
        "t3d_tok_s_longest_over_shortest": round(by_len[max(by_len)] / by_len[min(by_len)], 3),
        "bidirectional_cache_modes": bidirectional_rows(net, [int(v) for v in args.bidirectional_lengths.split(",")]),
    }
    if args.real_shape_length:
        del net
        result["real_shape"] = real_shape_row(args.real_shape_length, args.real_shape_layers, args.repeats, args.real_shape_bare)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
