"""GPU rollout check (issue 10): t3d's engine on an SDAR-4B-shaped model against a bare cached loop.

    python benchmarks/gpu_rollout.py [--out /tmp/t3d-gpu-rollout] [--skip-collect]

Prepared for a lent GPU (about 6-8 minutes on one H200; never run by the tests):
1. writes a random-weight checkpoint in SDAR's layout at Qwen3-4B's shape (hidden 2560,
   36 layers, 32 / 8 heads, intermediate 9728, vocab 151,936), bf16;
2. in process, batch 128, prompts of 256 random ids, 1,024 new tokens, blocks of 4, at 1
   and 4 tokens per step (temperature 1, top-k log-probs k = 8, no EOS stop):
   - `t3d`: `sample` (exact KV cache, bf16, SDPA): tokens/s, peak GPU memory, and the
     share of wall time outside the network (CUDA events around every forward);
   - `bare`: the bare cached block loop of benchmarks/rollout_throughput.py (greedy);
3. t3d-collect --gpus-per-worker 1 on the same 128 prompts at 1 token per step, with
   its tokens/s read from the dataset's manifest (Ray start and teacher load included).
Prints one JSON object. Anchor: JetEngine's 5,000+ tok/s for SDAR on an H200.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_throughput import bare_cached_loop  # noqa: E402

from t3d.dllm import load_model  # noqa: E402
from t3d.dllm.sampling import SamplerConfig, sample  # noqa: E402
from t3d.dllm.tiny import build_real_layout  # noqa: E402

QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, num_layers=36, num_heads=32, num_kv_heads=8, intermediate_size=9728)
BATCH, PROMPT, LENGTH, BLOCK = 128, 256, 1024, 4


class GpuNetworkClock:
    """GPU time inside the network's forwards, from CUDA events (no synchronisation while running)."""

    def __init__(self, net) -> None:
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.hooks = [net.register_forward_pre_hook(self._pre), net.register_forward_hook(self._post)]

    def _pre(self, *_):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.pairs.append((start, torch.cuda.Event(enable_timing=True)))

    def _post(self, *_):
        self.pairs[-1][1].record()

    def seconds(self) -> float:
        torch.cuda.synchronize()
        for hook in self.hooks:
            hook.remove()
        return sum(a.elapsed_time(b) for a, b in self.pairs) / 1000.0


def timed(fn, net=None) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    clock = GpuNetworkClock(net) if net is not None else None
    tic = time.perf_counter()
    tokens = int(fn())
    torch.cuda.synchronize()
    wall = time.perf_counter() - tic
    row = {"seconds": round(wall, 2), "tok_s": round(tokens / wall, 1), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if clock is not None:
        inside = clock.seconds()
        row |= {"network_s": round(inside, 2), "outside_network_share": round(max(0.0, 1 - inside / wall), 4)}
    return row


def run_collect(ckpt: Path, root: Path, prompts: list[list[int]]) -> dict:
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = root / "collect"
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "t3d.pipeline.collect", "--model", str(ckpt), "--prompts", str(path),
                    "--out", str(out), "--overwrite", "--gpus-per-worker", "1", "--max-new-tokens", str(LENGTH),
                    "--block-size", str(BLOCK), "--steps-per-block", str(BLOCK), "--rollouts-per-prompt", "1",
                    "--batch-size", str(BATCH), "--shard-size", str(BATCH), "--no-chat-template",
                    "--no-stop-at-eos", "--no-progress"], check=True)
    wall = time.perf_counter() - tic
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest.get("shards", {})
    tokens = sum(s.get("response_tokens", 0) for s in (shards.values() if isinstance(shards, dict) else shards))
    return {"wall_s": round(wall, 1), "response_tokens": tokens, "tok_s_incl_ray_and_load": round(tokens / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/t3d-gpu-rollout")
    parser.add_argument("--skip-collect", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this script needs a GPU"
    root = Path(args.out)
    report: dict = {"device": torch.cuda.get_device_name(0), "batch": BATCH, "prompt": PROMPT, "new_tokens": LENGTH, "block": BLOCK}
    tic = time.perf_counter()
    ckpt = build_real_layout(root / "sdar-4b", "sdar", shards=2, device="cuda", **QWEN3_4B)
    report["write_s"] = round(time.perf_counter() - tic, 1)
    model = load_model(ckpt, device="cuda")
    report["dtype"] = str(model.dtype)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 151000, (PROMPT,), generator=g).tolist() for _ in range(BATCH)]
    seeds = list(range(BATCH))
    sample(model, prompts[:8], SamplerConfig(max_new_tokens=16, block_size=BLOCK), seeds[:8])  # warm-up
    for per_step in (1, 4):
        steps = BLOCK // per_step
        cfg = SamplerConfig(max_new_tokens=LENGTH, block_size=BLOCK, steps_per_block=steps, logits_top_k=8, stop_at_eos=False)
        t3d = timed(lambda: sample(model, prompts, cfg, seeds).response_length.sum(), model.net)
        bare = timed(lambda: bare_cached_loop(model.net, prompts, LENGTH, steps=steps))
        report[f"{per_step}_tok_per_step"] = {"t3d": t3d, "bare": bare, "t3d_vs_bare": round(t3d["tok_s"] / bare["tok_s"], 3)}
        print(json.dumps(report[f"{per_step}_tok_per_step"]), file=sys.stderr)
    del model
    torch.cuda.empty_cache()
    if not args.skip_collect:
        report["collect_1_tok_per_step"] = run_collect(ckpt, root, prompts)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
