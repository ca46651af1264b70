"""One GPU check for t3d (issue 21 item 5): real shapes, one process, one JSON, within 8 minutes on an H100.

    python benchmarks/gpu_check.py [--cache-dir DIR] [--budget-s 480] > gpu_check.json
    python benchmarks/gpu_check.py --smoke        # the same code at a tiny shape on CPU (tests)
    python benchmarks/gpu_check.py --plan [--card H100]   # the roofline and the time estimate only

Runs on the GPU image as it is (torch, transformers, peft, safetensors, ...; no Ray,
polars, zarr or numcodecs), after `pip install --no-deps --no-build-isolation -e .`:
nothing here or on its import path loads those, and the training data comes from memory.
Parts, each timed out on its own (`--budget-s` shares what is left among them), each
freeing its models before the next (`freed` says so):
1. `checkpoint`: an SDAR-4B-Chat-shaped random-weight checkpoint in the published layout
   (its config.json's shape: head dim 128, untied embeddings; bf16, two safetensors
   shards), built once into `--cache-dir` and reused;
2. `load`: loaded natively (`load_model`, Qwen3ForCausalLM), time and peak memory; bf16
   logits against the same weights in fp32 (max abs / relative difference, top-1 agreement);
3. `decode`: at batch 128, prompts of 256 ids, 1,024 new tokens, blocks of 4, at 1 and 4
   tokens per step: t3d's engine (`sample`, exact KV cache) and the bare cached loop of
   benchmarks/rollout_throughput.py: tok/s, peak memory, the share of wall time outside
   the network (CUDA events around every trunk and LM-head forward);
4. `train_full` / `train_lora`: T3D steps of an SDAR-1.7B shape (batch 2, 1,024 response
   tokens) from rollouts made in memory: full fine-tuning (FSDP2 on one GPU, float32 master
   weights, bf16 compute) and LoRA (`--lora-r 16`, the base frozen in bf16, one worker):
   tokens/s, peak memory, the loop's overhead over a bare forward + backward + AdamW step;
5. `train_offload`: the full setting with `--offload` on the one GPU (FSDP2 over one process,
   shards, gradients and AdamW in pinned host memory, the step on the CPU), last and short
   (one warm-up step, two timed pairs): that it trains, its GPU peak beside `train_full`'s.
Beside each measured figure: the card's limit from a roofline model of the same shapes
(`roofline`: FLOPs and bytes per forward or step, commit forwards and KV reads included),
the `fraction_of_limit` reached, and `launch_bound` (half or more of the wall time outside
the network). A part that fails or runs long keeps what it measured, with its error beside
it, and the rest go on; past the budget and 30 s the partial JSON is printed and the
process exits. Expected on an H100 (`--plan`): ~320 s (decode ~135 s at a fifth of its
limit, training ~60 s, `train_offload` ~50 s at assumed PCIe and host-memory rates and
capped at 90 s, checkpoints and loading ~70 s) against the 480 s budget.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

HEAVY = ("ray", "polars", "zarr", "numcodecs")
"""Absent from the GPU image: the check must never import them."""

# SDAR-4B-Chat's config.json as published (JetAstra/SDAR @ c2041a8, training/model/SDAR-4B-Chat/).
SDAR_4B_CHAT = {
    "architectures": ["SDARForCausalLM"], "model_type": "sdar", "attention_bias": False, "attention_dropout": 0.0,
    "attn_implementation": "flex_attention", "bos_token_id": 151643, "eos_token_id": 151643, "block_size": 4,
    "mask_token_id": 151669, "fuse_cross_entropy": True, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560,
    "initializer_range": 0.02, "intermediate_size": 9728, "max_position_embeddings": 32768, "max_window_layers": 36,
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": False, "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip
# SDAR-1.7B-Chat: Qwen3-1.7B's shape in the same layout; its head is untied like 4B's (the published
# model.safetensors holds 2.03 B parameters, 4.06 GB in bf16: a tied head would leave 1.72 B).
SDAR_1_7B_CHAT = SDAR_4B_CHAT | {
    "hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 16, "num_hidden_layers": 28,
    "max_window_layers": 28,
}  # fmt: skip
# The smoke shape: the same layout and vocabulary (SDAR's special ids), two tiny layers; head dim 32 is
# not hidden / heads (16), as 128 is not for SDAR-4B (2560 / 32 = 80).
SMOKE_SHAPE = SDAR_4B_CHAT | {
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
    "num_hidden_layers": 2, "max_window_layers": 2, "max_position_embeddings": 4096,
}  # fmt: skip
GENERATION_CONFIG = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}
ORDINARY_IDS = 151_000
"""Random prompt and response ids stay below SDAR's special tokens."""

CARDS = {"H200": (989e12, 4.8e12), "H100 PCIe": (756e12, 2.0e12), "H100": (989e12, 3.35e12)}
"""Peak dense bf16 FLOP/s and memory bandwidth (bytes/s) per card (SXM unless named), the first whose key
is in the device name."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """The sizes of every part (the issue's; `SMOKE` shrinks them)."""

    decode_batch: int = 128
    """Rows decoded at once."""
    prompt: int = 256
    """Prompt ids per decoded row."""
    new_tokens: int = 1024
    """Response length of the decode."""
    block: int = 4
    """Block size (SDAR's)."""
    tokens_per_step: tuple[int, ...] = (1, 4)
    """Decode settings: tokens revealed per step."""
    logits_rows: int = 2
    """Rows of the bf16 vs fp32 logits comparison."""
    logits_tokens: int = 64
    """Tokens per row of that comparison."""
    train_batch: int = 2
    """Rows per training step."""
    train_prompt: int = 32
    """Prompt ids per training row (whole blocks: SDAR's blocks sit at absolute positions)."""
    train_response: int = 1024
    """Response tokens per training row."""
    train_pairs: int = 8
    """Timed (loop step, bare step) pairs per training setting, after `train_warmup` loop steps."""
    train_warmup: int = 2
    """Untimed loop steps first (allocator, kernels)."""
    lora_r: int = 16
    """LoRA rank of the LoRA training entry."""


FULL = Workload()
SMOKE = Workload(decode_batch=3, prompt=8, new_tokens=8, logits_tokens=12, train_prompt=8, train_response=8,
                 train_pairs=1, train_warmup=1)  # fmt: skip


# ---- the card and the roofline -------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    """What bounds a step: peak FLOP/s and bytes/s."""

    name: str
    flops: float
    bandwidth: float

    def seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.flops, nbytes / self.bandwidth)


def card_for(device: torch.device) -> Card | None:
    """The table's entry for this GPU, a measured one for a CPU, None for a GPU not in the table."""
    if device.type == "cpu":
        return measured_cpu_card()
    name = torch.cuda.get_device_name(device)
    return next((Card(name, *CARDS[key]) for key in CARDS if key in name), None)


def measured_cpu_card() -> Card:
    """A CPU's limit, measured (the smoke run's stand-in for a table entry): large fp32 matmuls and copies."""
    a = torch.randn(1024, 1024)
    flops = max(_rate(lambda: a @ a, 2 * 1024**3) for _ in range(3))
    src, dst = torch.ones(1 << 24), torch.zeros(1 << 24)  # 64 MB each, touched before timing
    bandwidth = max(_rate(lambda: dst.copy_(src), 2 * src.numel() * 4) for _ in range(3))
    return Card(f"cpu ({os.cpu_count()} cores, measured)", flops, bandwidth)


def _rate(fn: Callable, work: float) -> float:
    tic = time.perf_counter()
    fn()
    return work / (time.perf_counter() - tic)


@dataclass(frozen=True)
class Shape:
    """The network sizes a roofline needs, from a config.json."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: dict) -> Shape:
        return cls(config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
                   config["num_key_value_heads"], config["head_dim"], config["intermediate_size"], config["vocab_size"])  # fmt: skip

    @property
    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of one decoder layer's projections: q, k, v, o, gate, up, down."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, m = self.hidden, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, m), (h, m), (m, h)]

    @property
    def trunk(self) -> int:
        """Matmul parameters of the decoder layers (norms are noise)."""
        return self.layers * sum(i * o for i, o in self.linears)

    @property
    def params(self) -> int:
        """Every parameter: trunk, embeddings and an untied head."""
        return self.trunk + 2 * self.vocab * self.hidden

    @property
    def kv_bytes(self) -> int:
        """bf16 K and V of one token over all layers."""
        return self.layers * 2 * self.kv_heads * self.head_dim * 2

    def attention_flops(self, queries: int, keys: int) -> float:
        """QK^T and PV of one row: what a masked SDPA computes (the whole queries x keys square)."""
        return 4.0 * self.layers * queries * keys * self.heads * self.head_dim


def forward_cost(shape: Shape, rows: int, queries: int, cached: int, head_rows: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one bf16 forward of `rows` rows: `queries` new positions over `cached` ones
    in the KV cache, the LM head on `head_rows` positions per row (bytes: weights once, the cache
    read, the new K/V written, the logits written)."""
    keys = cached + queries
    flops = rows * (2.0 * shape.trunk * queries + shape.attention_flops(queries, keys) + 2.0 * shape.hidden * shape.vocab * head_rows)
    weights = 2 * (shape.trunk + (shape.vocab * shape.hidden if head_rows else 0))
    nbytes = weights + rows * (shape.kv_bytes * keys + 2 * shape.vocab * head_rows)
    return flops, nbytes


def decode_roofline(shape: Shape, wl: Workload, per_step: int, card: Card) -> dict:
    """The limit of one decode: prefill, then per block `block / per_step` steps over the block (the head
    on its masked positions) and one commit forward storing the finished block's K/V (no head), but
    for the last block, whose K/V nobody reads."""
    steps = wl.block // per_step
    calls = [forward_cost(shape, wl.decode_batch, wl.prompt, 0, 0)]
    last = wl.prompt + wl.new_tokens - wl.block
    for start in range(wl.prompt, last + 1, wl.block):
        calls += [forward_cost(shape, wl.decode_batch, wl.block, start, wl.block - s * per_step) for s in range(steps)]
        if start < last:
            calls.append(forward_cost(shape, wl.decode_batch, wl.block, start, 0))
    seconds = sum(card.seconds(f, b) for f, b in calls)
    flops, nbytes = sum(f for f, _ in calls), sum(b for _, b in calls)
    tokens = wl.decode_batch * wl.new_tokens
    return {
        "forwards": len(calls), "gflop_per_token": round(flops / tokens / 1e9, 2),
        "mb_per_token": round(nbytes / tokens / 1e6, 2), "limit_s": round(seconds, 3),
        "limit_tok_s": round(tokens / seconds, 1),
        "memory_bound_share": round(sum(card.seconds(f, b) for f, b in calls if b / card.bandwidth > f / card.flops) / seconds, 3),
    }  # fmt: skip


def train_roofline(shape: Shape, rows: int, width: int, head_rows: int, tokens: int, card: Card, adapters: int = 0) -> dict:
    """The limit of one T3D step: the reference's forward and the student's forward + backward over
    (rows, width), the LM head on `head_rows` selected positions (the student's chunked head runs
    twice forward and two matmuls backward). Bytes: weights, gradients and AdamW state (FSDP's
    float32 -> bf16 cast of both models included); activations are not counted.
    With `adapters` (LoRA's trainable numbers): a frozen bf16 base shared with the reference, no weight
    gradients in the trunk, AdamW over the adapters only."""
    attention = rows * shape.attention_flops(width, width)
    backward = 1 if adapters else 2  # matmuls per forward matmul: input gradients (and weight gradients)
    student = 2.0 * rows * width * ((1 + backward) * shape.trunk + 3 * adapters) + 3 * attention + 8.0 * shape.hidden * shape.vocab * head_rows
    reference = 2.0 * rows * width * shape.trunk + attention + 2.0 * shape.hidden * shape.vocab * head_rows
    params = shape.params
    if adapters:
        nbytes = (2 + 2 + 2) * params + 28 * adapters  # bf16 reads (reference, student forward and backward)
    else:
        nbytes = (6 + 2 + 2 + 4 + 28) * params + (6 + 2) * params  # student: cast, fwd, bwd, fp32 grads, AdamW; reference
    seconds = card.seconds(student + reference, nbytes)
    return {"tflop_per_step": round((student + reference) / 1e12, 3), "gb_per_step": round(nbytes / 1e9, 2),
            "limit_s_per_step": round(seconds, 4), "limit_tok_s": round(tokens / seconds, 1)}  # fmt: skip


# ---- budget, clocks, memory ----------------------------------------------------------------------


class PartTimeout(Exception):
    """A part ran past its share of the budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread after `seconds` (SIGALRM, taken between Python bytecodes).

    Nests: an inner limit never outlasts the enclosing one, which is re-armed on the way out.
    """
    outer = signal.getitimer(signal.ITIMER_REAL)[0]
    outer_deadline = time.monotonic() + outer if outer > 0 else None
    if outer_deadline is not None:
        seconds = min(seconds, outer)

    def alarm(*_):
        raise PartTimeout(f"timed out after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, max(outer_deadline - time.monotonic(), 0.01))


def guarded(fn: Callable[[], Any], seconds: float, out: dict, floor: float = 5.0) -> bool:
    """Run `fn` within `seconds`; a failure or a timeout is written into `out["error"]` (False), not raised.
    Under `floor` seconds it is not started."""
    if seconds < floor:
        out["skipped"] = "budget spent"
        return False
    try:
        with time_limit(seconds):
            fn()
        return True
    except Exception as err:  # noqa: BLE001  (a failed part is a line in the report, not the end of the run)
        out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        return False


class Report:
    """The one JSON object: filled part by part, printed once (at the end, or by the watchdog past the budget)."""

    def __init__(self, budget_s: float) -> None:
        self.data: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s
        self.min_part_s = 5.0
        """A part with less time left than this is skipped."""
        self._printed = threading.Lock()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def part(self, key: str, fn: Callable[[dict], None], cap_s: float) -> dict:
        """Run one part within min(cap_s, what is left); it fills its own entry as it goes, so what it
        measured before failing or running out of time stays, with the error beside it."""
        out = self.data.setdefault(key, {})
        tic = time.perf_counter()
        guarded(lambda: fn(out), min(cap_s, self.left()), out, self.min_part_s)
        free_memory()
        out["part_s"] = round(time.perf_counter() - tic, 1)
        print(f"gpu_check: {key} {json.dumps(out)}", file=sys.stderr, flush=True)
        return out

    def emit(self, note: str | None = None) -> None:
        if not self._printed.acquire(blocking=False):
            return
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.data["imported_heavy_modules"] = sorted(m for m in HEAVY if m in sys.modules)
        if note:
            self.data["stopped"] = note
        print(json.dumps(self.data, indent=1), flush=True)

    def watchdog(self, grace_s: float = 30.0) -> None:
        """Past the budget and a grace (a part stuck inside a kernel or a collective): the partial JSON, then exit."""

        def stop():
            self.emit(f"budget exceeded by {grace_s:.0f} s; partial report")
            os._exit(3)

        timer = threading.Timer(max(self.left(), 0) + grace_s, stop)
        timer.daemon = True
        timer.start()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on CPU the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NetworkClock:
    """Time inside some modules' forwards: CUDA events (no synchronisation while running) or host time on CPU."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: list[list] = []
        self.calls = 0  # of the first module
        self.hooks = [h for m in modules for h in (m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post))]
        self.hooks.append(modules[0].register_forward_pre_hook(self._count))

    def _count(self, *_):
        self.calls += 1

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pre(self, *_):
        self.spans.append([self._now(), None])

    def _post(self, *_):
        self.spans[-1][1] = self._now()

    def close(self) -> tuple[float, int]:
        """(seconds inside, calls of the first module); removes the hooks."""
        for hook in self.hooks:
            hook.remove()
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans) / 1e3, self.calls
        return sum(b - a for a, b in self.spans), self.calls


def network_parts(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The trunk and the LM head, which callers may run apart (the engine's commit forwards run the trunk only)."""
    trunk, head = getattr(net, "model", None), getattr(net, "lm_head", None)
    return [trunk, head] if trunk is not None and head is not None else [net]


def timed_run(fn: Callable[[], int], net: torch.nn.Module, device: torch.device) -> dict:
    """tok/s, peak memory and the share of wall time outside the network (trunk and head) in `fn()` (-> tokens)."""
    reset_peak(device)
    clock = NetworkClock(network_parts(net), device)
    try:
        tic = time.perf_counter()
        tokens = int(fn())
        sync(device)
        wall = time.perf_counter() - tic
    finally:
        inside, forwards = clock.close()
    outside = max(0.0, 1 - inside / wall)
    return {"seconds": round(wall, 2), "tok_s": round(tokens / wall, 1), "peak_gib": peak_gib(device),
            "trunk_forwards": forwards, "network_s": round(inside, 3), "outside_network_share": round(outside, 4),
            "launch_bound": outside >= 0.5}  # fmt: skip


def with_limit(row: dict, limit: dict, key: str = "limit_tok_s") -> dict:
    return row | {"fraction_of_limit": round(row["tok_s"] / limit[key], 4) if limit else None}


# ---- parts ---------------------------------------------------------------------------------------


def write_checkpoint(out: dict, path: Path, config: dict, device: torch.device) -> None:
    """A random-weight checkpoint of `config` (a published config.json) in its own layout, bf16, two shards;
    reused when `path` already holds one of the same config (a finished build is renamed into place)."""
    out["path"] = str(path)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()) == config:
        out |= {"built": False, **_files(path)}
        return
    import shutil

    import transformers

    from t3d.dllm.families import get_family
    from t3d.dllm.weights import state_dict_for_export, write_shards

    arch = get_family("sdar").architecture
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tic = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # a GPU initialises 4 B parameters in seconds
        net = getattr(transformers, arch.model_class)(arch.build_config(dict(config), tmp)).to(torch.bfloat16)
    write_shards(state_dict_for_export(net, arch.checkpoint_name, torch.bfloat16), tmp, 2)
    del net
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    out |= {"built": True, "build_s": round(time.perf_counter() - tic, 1), **_files(path)}


def _files(path: Path) -> dict:
    files = sorted(path.glob("*.safetensors"))
    return {"shards": len(files), "gb": round(sum(f.stat().st_size for f in files) / 1e9, 2)}


def load_part(out: dict, ckpt: Path, wl: Workload, device: torch.device, config: dict) -> None:
    """Load natively in bf16 (time, peak); the same ids through it and through its weights in fp32."""
    from t3d.dllm import load_model

    reset_peak(device)
    tic = time.perf_counter()
    model = load_model(ckpt, device=device, dtype="bfloat16")
    sync(device)
    probe = weakref.ref(model.net)
    config_of = model.net.config
    out |= {"load_s": round(time.perf_counter() - tic, 1), "load_peak_gib": peak_gib(device), "native": model.native,
            "network": type(model.net).__name__, "dtype": str(model.dtype), "head_dim": config_of.head_dim,
            "tied_embeddings": bool(config_of.tie_word_embeddings),
            "params_b": round(sum(p.numel() for p in model.net.parameters()) / 1e9, 3)}  # fmt: skip
    out["shape_as_published"] = (config_of.head_dim, config_of.tie_word_embeddings) == (config["head_dim"], config["tie_word_embeddings"])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ORDINARY_IDS, (wl.logits_rows, wl.logits_tokens), generator=gen).to(device)
    with torch.no_grad():
        low = model.logits(ids, block_size=wl.block).float()  # (R, T, V)
        model.net.float()  # the same weights in fp32, in place
        high = model.logits(ids, block_size=wl.block)  # (R, T, V)
    diff = (low - high).abs()
    out |= {"bf16_vs_fp32_max_abs": float(diff.max()), "bf16_vs_fp32_max_rel": float(diff.max() / high.abs().max()),
            "bf16_vs_fp32_mean_abs": float(diff.mean()),
            "bf16_vs_fp32_top1_agree": float((low.argmax(-1) == high.argmax(-1)).float().mean())}  # fmt: skip
    del model, low, high, diff
    free_memory()
    out["freed"] = probe() is None


def decode_part(out: dict, ckpt: Path, wl: Workload, device: torch.device, card: Card | None, shape: Shape) -> None:
    """The engine and the bare cached loop at 1 and 4 tokens per step, each measurement timed out on its own
    (at 10x its roofline time plus 20 s: under a tenth of the limit is a finding, not a wait)."""
    from t3d.dllm import load_model
    from t3d.dllm.sampling import SamplerConfig, sample

    model = load_model(ckpt, device=device, dtype="bfloat16")
    probe = weakref.ref(model.net)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, ORDINARY_IDS, (wl.prompt,), generator=gen).tolist() for _ in range(wl.decode_batch)]
    seeds = list(range(wl.decode_batch))
    sample(model, prompts[:2], SamplerConfig(max_new_tokens=wl.block, block_size=wl.block), seeds[:2])  # warm-up
    with contextlib.suppress(Exception):  # imported before timing; a failure is the bare entries' error
        bare_loop()
    out |= {"batch": wl.decode_batch, "prompt": wl.prompt, "new_tokens": wl.new_tokens, "block": wl.block}
    for per_step in wl.tokens_per_step:
        steps = wl.block // per_step
        limit = decode_roofline(shape, wl, per_step, card) if card else None
        cfg = SamplerConfig(max_new_tokens=wl.new_tokens, block_size=wl.block, steps_per_block=steps, logits_top_k=8,
                            stop_at_eos=False)  # fmt: skip
        runs = {
            "t3d": lambda: sample(model, prompts, cfg, seeds).response_length.sum(),
            "bare": lambda: bare_loop()(model.net, prompts, wl.new_tokens, steps=steps, block=wl.block),
        }
        row = out[f"{per_step}_tok_per_step"] = {"roofline": limit}
        for name, fn in runs.items():
            row[name] = {}
            cap = 10 * limit["limit_s"] + 20 if limit else 240
            guarded(lambda: row[name].update(with_limit(timed_run(fn, model.net, device), limit)), cap, row[name])
            if "timed out" in row[name].get("error", ""):
                row[name]["tok_s_at_most"] = round(wl.decode_batch * wl.new_tokens / cap, 1)  # it did not finish in `cap`
        if "tok_s" in row["t3d"] and "tok_s" in row["bare"]:
            row["t3d_vs_bare"] = round(row["t3d"]["tok_s"] / row["bare"]["tok_s"], 3)
    del model
    free_memory()
    out["freed"] = probe() is None


def bare_loop() -> Callable:
    """The bare cached loop that benchmarks/rollout_throughput.py holds `sample` against (imported when
    first timed: a change there costs the bare entries only)."""
    from rollout_throughput import bare_cached_loop

    return bare_cached_loop


# ---- training from memory ------------------------------------------------------------------------


class MemoryLoader:
    """Synthetic rollouts as `Batch`es, in place of `TrajectoryDataset` (the GPU image has no zarr):
    random ordinary ids, one token revealed per step in a random order within each block."""

    def __init__(self, wl: Workload, pad_id: int, seed: int = 0) -> None:
        self.wl, self.pad_id, self.rng, self.taken = wl, pad_id, np.random.default_rng(seed), 0
        self.block_sizes = [wl.block]
        self.response_length = wl.train_response
        self.epochs_seen = 0.0

    def next_batch(self):
        from t3d.trainer.data import Batch

        n, wl = self.wl.train_batch, self.wl
        order = self.rng.random((n, wl.train_response // wl.block, wl.block)).argsort(-1)  # (n, nb, B)
        reveal = (np.arange(wl.train_response // wl.block)[None, :, None] * wl.block + order).reshape(n, -1)  # (n, L)
        rows = np.arange(self.taken, self.taken + n)
        self.taken += n
        return Batch(
            prompt_ids=torch.from_numpy(self.rng.integers(0, ORDINARY_IDS, (n, wl.train_prompt))),
            prompt_mask=torch.ones(n, wl.train_prompt, dtype=torch.bool),
            x0=torch.from_numpy(self.rng.integers(0, ORDINARY_IDS, (n, wl.train_response))),
            reveal_step=torch.from_numpy(reveal), row_seed=torch.from_numpy(rows * 7919 + 1),
            row_id=torch.from_numpy(np.stack([np.zeros_like(rows), rows], axis=1)),
        )  # fmt: skip


def build_memory_trainer(ckpt: Path, wl: Workload, device: torch.device, out: Path, lora_r: int, offload: bool = False):
    """`build_trainer` on this checkpoint with the in-memory loader in place of the dataset.

    Full (lora_r 0): float32 master weights, FSDP2-sharded over the one-process group (bf16
    compute). LoRA: the base frozen in the checkpoint's bf16 (peft keeps the adapters in
    float32), one worker's plain loop (nothing to shard: the reference is the same network).
    `offload`: the full setting with --offload (FSDP2's CPUOffloadPolicy on the one process).
    """
    from t3d.trainer import build, sharding
    from t3d.trainer.config import build_config

    flags = {"model": str(ckpt), "data": "(in memory)", "out": str(out), "batch_size": wl.train_batch,
             "max_steps": 1_000_000, "device": device.type, "progress": False, "save_every": 0,
             "path_k_steps": wl.block, "warmup_steps": 0}  # fmt: skip
    flags |= {"lora_r": lora_r, "dtype": "bfloat16"} if lora_r else {"dtype": "float32", "strategy": "fsdp", "offload": offload}
    cfg = build_config(flags)
    original = build.build_loader
    build.build_loader = lambda cfg, model, dist, log=print: MemoryLoader(wl, model.pad_id)
    try:
        trainer = build.build_trainer(cfg, log=lambda *a: None)
    finally:
        build.build_loader = original
    if not lora_r and not sharding.is_sharded(trainer.student.net):  # with --offload the build shards by itself
        sharding.STRATEGIES["fsdp"].shard(trainer, build._rebuild_optimizer)  # as the loop does with > 1 worker
    return trainer


def bare_step(trainer, states, batch, norms, device: torch.device) -> tuple[float, float]:
    """Forward (reference + student) + loss + backward + AdamW on ready states -> (wall s, s inside fwd + bwd)."""
    from t3d.trainer.step import micro_loss

    marks = [_mark(device)]
    trainer.optimizer.zero_grad(set_to_none=True)
    marks.append(_mark(device))
    loss, _ = micro_loss(trainer, states, batch, norms)
    loss.backward()
    marks.append(_mark(device))
    trainer.optimizer.step()
    marks.append(_mark(device))
    sync(device)
    return _elapsed(marks[0], marks[3]), _elapsed(marks[1], marks[2])


def _mark(device: torch.device):
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed(a, b) -> float:
    return a.elapsed_time(b) / 1e3 if isinstance(a, torch.cuda.Event) else b - a


def time_training(trainer, wl: Workload, device: torch.device) -> dict:
    """Loop steps (`loop.run_steps`: data, states, step, schedule) interleaved with bare steps on one batch."""
    from t3d.trainer.loop import run_steps
    from t3d.trainer.step import make_states, step_normalizers

    metrics: list[dict] = []

    def loop_step() -> float:
        trainer.cfg = dataclasses.replace(trainer.cfg, train=dataclasses.replace(trainer.cfg.train, max_steps=trainer.step + 1))
        tic = time.perf_counter()
        run_steps(trainer, metrics.append)
        sync(device)
        return time.perf_counter() - tic

    for _ in range(wl.train_warmup):
        loop_step()
    reset_peak(device)
    batch = trainer.loader.next_batch()
    states = make_states(batch, trainer.states, trainer.device, trainer.student.dtype)
    norms = step_normalizers([states], trainer.dist, trainer.objective)
    loop_s, bare = [], []
    for _ in range(wl.train_pairs):
        loop_s.append(loop_step())
        bare.append(bare_step(trainer, states, batch, norms, device))
    tokens = statistics.mean(m["input_tokens"] for m in metrics[wl.train_warmup :])
    loop, bare_s, inside = statistics.median(loop_s), statistics.median(b[0] for b in bare), statistics.median(b[1] for b in bare)
    outside = max(0.0, 1 - inside / loop)
    return {
        "input_tokens_per_step": tokens, "s_per_step": round(loop, 4), "tok_s": round(tokens / loop, 1),
        "bare_s_per_step": round(bare_s, 4), "loop_overhead": round(loop / bare_s - 1, 4), "peak_gib": peak_gib(device),
        "network_s_per_step": round(inside, 4), "outside_network_share": round(outside, 4), "launch_bound": outside >= 0.5,
        "loss_finite": all(np.isfinite(m["loss"]) for m in metrics),
        "_shape": (states.input_ids.shape[0], states.input_ids.shape[1], int((states.supervised | states.path).sum())),
    }  # fmt: skip


def train_part(
    out: dict, ckpt: Path, wl: Workload, device: torch.device, card: Card | None, shape: Shape, lora_r: int,
    offload: bool = False,
) -> None:  # fmt: skip
    """T3D steps of one setting (full: lora_r 0, FSDP2 over a one-process group, with `offload` its shards on
    the CPU); the models are freed afterwards (`freed`)."""
    from t3d.trainer.sharding import is_offloaded, one_process_group

    with tempfile.TemporaryDirectory(prefix="t3d-gpu-check-") as tmp, one_process_group(device) if not lora_r else contextlib.nullcontext():
        trainer = build_memory_trainer(ckpt, wl, device, Path(tmp), lora_r, offload)
        if offload and not is_offloaded(trainer.student.net):
            raise RuntimeError("--offload was accepted but the student's FSDP units keep their shards on the device")
        probe = weakref.ref(trainer.student.net)
        trained = [p for p in trainer.student.net.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in trained)
        if lora_r and trainable > 0.1 * sum(p.numel() for p in trainer.student.net.parameters()):
            raise RuntimeError(f"--lora-r {lora_r} was accepted but the student trains {trainable} parameters: no adapters")
        setting = "full, FSDP2 on one device" + (", --offload" if offload else "")
        out |= {"setting": f"LoRA r {lora_r}, bf16 base, one worker" if lora_r else setting,
                "trainable_params_m": round(trainable / 1e6, 2), "trainable_dtype": str(trained[0].dtype)}  # fmt: skip
        try:
            out |= time_training(trainer, wl, device)
        finally:
            trainer.optimizer.state.clear()
            del trainer
            free_memory()
    rows, width, head_rows = out.pop("_shape")
    adapters = trainable if lora_r else 0
    limit = train_roofline(shape, rows, width, head_rows, out["input_tokens_per_step"], card, adapters) if card else None
    out |= with_limit(out, limit) | {"roofline": limit, "freed": probe() is None}


def lora_available() -> str | None:
    """None when t3d-distill takes --lora-r; else why not."""
    try:
        from t3d.trainer.config import build_config

        build_config({"lora_r": 4})
    except Exception as err:  # noqa: BLE001
        return f"not available: t3d-distill has no --lora-r yet ({type(err).__name__}: {str(err).splitlines()[0]})"
    return None


# ---- the run -------------------------------------------------------------------------------------


def plan(wl: Workload, card: Card) -> dict:
    """The roofline limits of the full run's decode and training steps on `card`, and the wall time expected
    at a fifth of them (decode) and a third (training), plus building, writing and loading the checkpoints."""
    big, small = Shape.of(SDAR_4B_CHAT), Shape.of(SDAR_1_7B_CHAT)
    decode = {p: decode_roofline(big, wl, p, card) for p in wl.tokens_per_step}
    width = wl.train_prompt + 2 * wl.train_response
    train = train_roofline(small, wl.train_batch, width, wl.train_batch * wl.train_response // 2, wl.train_batch * width, card)
    steps = 2 * (wl.train_warmup + wl.train_pairs * 2)
    disk = 1e9  # bytes/s, writing and reading safetensors
    estimate = {
        "import_and_cuda_init_s": 20, "checkpoints_s": round(2 * (big.params + small.params) / disk + 20),
        "load_and_logits_s": round(2 * big.params / disk + 6 * big.params / card.bandwidth + 10),
        "decode_s": round(sum(2 * d["limit_s"] * 5 for d in decode.values()) + 10),
        "train_s": round(steps * train["limit_s_per_step"] * 3 + 2 * (4 * small.params / disk + 20)),
        # 5 steps, each moving fp32 weights up and gradients down over PCIe (~25 GB/s) and AdamW on the host
        # (~32 bytes read and written per parameter at ~20 GB/s); assumed rates, not the card's
        "train_offload_s": round(5 * (8 * small.params / 25e9 + 32 * small.params / 20e9) + 4 * small.params / disk + 20),
    }
    estimate["total_s"] = sum(estimate.values())
    return {"card": card.name, "decode_roofline": decode, "train_roofline_full": train, "estimate_wall_s": estimate}


def run(args, report: Report) -> None:
    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.manual_seed(0)
    wl = SMOKE if smoke else FULL
    card = card_for(device)
    big, small = (SMOKE_SHAPE, SMOKE_SHAPE) if smoke else (SDAR_4B_CHAT, SDAR_1_7B_CHAT)
    report.data |= {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "smoke": smoke,
                    "torch": torch.__version__, "card": dataclasses.asdict(card) if card else None,
                    "workload": dataclasses.asdict(wl), "budget_s": args.budget_s}  # fmt: skip
    if card and not smoke:
        report.data["plan"] = plan(wl, card)
    cache = Path(args.cache_dir).expanduser()
    ckpt_4b = cache / ("smoke" if smoke else "sdar-4b-chat-shape")
    ckpt_17b = cache / ("smoke" if smoke else "sdar-1.7b-chat-shape")
    train_reserve = 0 if smoke else 150  # seconds kept for the training parts while decoding
    if "shards" not in report.part("checkpoint", lambda out: write_checkpoint(out, ckpt_4b, big, device), cap_s=180):
        return
    report.part("load", lambda out: load_part(out, ckpt_4b, wl, device, big), cap_s=120)
    report.part("decode", lambda out: decode_part(out, ckpt_4b, wl, device, card, Shape.of(big)),
                cap_s=report.left() - train_reserve)  # fmt: skip
    if "shards" not in report.part("train_checkpoint", lambda out: write_checkpoint(out, ckpt_17b, small, device), cap_s=120):
        return
    report.part("train_full", lambda out: train_part(out, ckpt_17b, wl, device, card, Shape.of(small), 0), cap_s=150)
    missing = lora_available()
    if missing:
        report.data["train_lora"] = {"lora": missing}
    else:
        report.part("train_lora", lambda out: train_part(out, ckpt_17b, wl, device, card, Shape.of(small), wl.lora_r),
                    cap_s=150)  # fmt: skip
    short = dataclasses.replace(wl, train_warmup=1, train_pairs=min(2, wl.train_pairs))  # the CPU steps AdamW: slow
    report.part("train_offload", lambda out: train_part(out, ckpt_17b, short, device, card, Shape.of(small), 0, offload=True),
                cap_s=90)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU (seconds): the same code paths")
    parser.add_argument("--plan", action="store_true", help="print the roofline limits and the wall-time estimate only")
    parser.add_argument("--card", default="H100", choices=sorted(CARDS), help="card of --plan")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget; parts share what is left")
    parser.add_argument("--cache-dir", default=os.environ.get("T3D_GPU_CHECK_CACHE", "~/.cache/t3d-gpu-check"),
                        help="where the checkpoints are built once and reused")  # fmt: skip
    args = parser.parse_args()
    if args.plan:
        print(json.dumps(plan(FULL, Card(args.card, *CARDS[args.card])), indent=1))
        return
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: needs a CUDA device (--smoke runs the same code at a tiny shape on CPU)")
    report = Report(args.budget_s)
    report.watchdog()
    try:
        run(args, report)
    finally:
        report.emit()


if __name__ == "__main__":
    main()
