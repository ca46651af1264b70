"""GPU check for real-family loading (issue 9): an SDAR-4B-shaped checkpoint, loaded natively on CUDA.

    python benchmarks/gpu_real_checkpoint.py [--out /tmp/sdar4b] [--prompts 64]

Prepared for a lent GPU (under 8 minutes on one H200); not run by the tests. It
1. writes a random-weight checkpoint in SDAR's published layout at Qwen3-4B's shape
   (hidden 2560, 36 layers, 32 / 8 heads, intermediate 9728, vocab 151,936), bf16, 2 shards;
2. loads it natively on CUDA (`load_model`, checkpoint dtype kept) and times it, with peak memory;
3. compares bf16 logits with an fp32 load on a short input (max |diff| and top-1 agreement);
4. runs t3d-collect on `--prompts` random-id prompts with --gpus-per-worker 1 and reads
   its tokens/s from the dataset it wrote.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from t3d.dllm import load_model
from t3d.dllm.tiny import build_real_layout

QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, num_layers=36, num_heads=32, num_kv_heads=8, intermediate_size=9728)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/t3d-sdar4b")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this script needs a GPU"
    root = Path(args.out)
    report: dict = {"device": torch.cuda.get_device_name(0)}

    tic = time.perf_counter()
    ckpt = build_real_layout(root / "sdar-4b", "sdar", shards=2, device="cuda", **QWEN3_4B)
    torch.cuda.empty_cache()
    report["write_s"] = round(time.perf_counter() - tic, 1)

    torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    model = load_model(ckpt, device="cuda")
    torch.cuda.synchronize()
    report |= {"load_s": round(time.perf_counter() - tic, 1), "dtype": str(model.dtype),
               "load_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    ids = torch.randint(0, 151000, (2, 64), device="cuda")
    with torch.no_grad():
        low = model.logits(ids, block_size=4).float()
    del model
    torch.cuda.empty_cache()
    full = load_model(ckpt, device="cuda", dtype="float32")
    with torch.no_grad():
        high = full.logits(ids, block_size=4)
    report |= {"bf16_vs_fp32_max_abs": float((low - high).abs().max()),
               "bf16_vs_fp32_top1_agree": float((low.argmax(-1) == high.argmax(-1)).float().mean())}
    del full
    torch.cuda.empty_cache()

    prompts = root / "prompts.jsonl"
    g = torch.Generator().manual_seed(0)
    with prompts.open("w") as fh:
        for _ in range(args.prompts):
            fh.write(json.dumps({"prompt": torch.randint(0, 151000, (128,), generator=g).tolist()}) + "\n")
    out = root / "collect"
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "t3d.pipeline.collect", "--model", str(ckpt), "--prompts", str(prompts),
                    "--out", str(out), "--gpus-per-worker", "1", "--max-new-tokens", str(args.max_new_tokens),
                    "--block-size", "4", "--steps-per-block", "4", "--rollouts-per-prompt", "1",
                    "--no-progress"], check=True)
    wall = time.perf_counter() - tic
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = sum(s.get("response_tokens", 0) for s in manifest.get("shards", []))
    report |= {"collect_wall_s": round(wall, 1), "collect_response_tokens": tokens,
               "collect_tok_per_s_incl_start": round(tokens / wall, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
