"""Why a student's confidences stay under the threshold on the built-in task: the task or the objective?

    python benchmarks/confidence_study.py --model teacher=builtin --model t3d=runs/.../t3d/student \\
        --model ce=runs/.../ce/student --json docs/confidence_study.json

Each model decodes the *test* prompts at one token per step (the static strategy, spb = B,
temperature 1, the threshold strategy's setting before it adds parallel reveals), and every
reveal is classed by the task's rule at that moment, given the tokens its word already shows:

- `one`: one token is valid there (the marker once its partner shows a symbol, `<eos>`),
- `several`: more than one is (a symbol; either of the first two positions while both are
  masked: the marker with probability 1 - q first, q second, else one of a symbols).

For each class it reports the confidence the sampler recorded at the reveal (the proposal's
probability, what `--threshold` compares), its share at or above the threshold, and the same
for a perfectly calibrated model: the true conditional probability of the task's most likely
token at that position and moment (1 for `one`; 1 - q, max(q, (1 - q) / a) or 1 / a for
`several`). A calibrated model can pass 0.9 only where one token is valid; if the students
are confident where the calibrated model is, and not elsewhere, the ceiling is the task's.
Prints one JSON object (and writes it with --json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from t3d.dllm import load_model
from t3d.dllm.sampling import SamplerConfig, sample
from t3d.dllm.task import BuiltinTask

CLASSES = ("one", "several")


def reveal_classes(task: BuiltinTask, prompt: list[int], tokens: np.ndarray, step: np.ndarray) -> list[tuple[int, str, float]]:
    """(position, class, calibrated top-1 probability) of each revealed response position, by the task's rule at its reveal.

    tokens, step: (L,) one row of SampleOutput.tokens / reveal_step (-1 on padding after the first EOS).
    """
    cfg = task.config
    q, a, width = cfg.marker_second_prob, cfg.alphabet_size, cfg.word_length
    cats = task.categories(prompt)
    out = []
    for i in np.flatnonzero(step >= 0):
        word, offset = divmod(int(i), width)
        if word >= len(cats):  # the <eos> (or a token past the last word): one valid
            out.append((int(i), "one", 1.0))
        elif offset >= 2:
            out.append((int(i), "several", 1 / a))
        else:
            partner = word * width + 1 - offset
            shown = 0 <= step[partner] < step[i]
            if not shown:
                out.append((int(i), "several", 1 - q if offset == 0 else max(q, (1 - q) / a)))
            elif tokens[partner] == task.marker_ids[cats[word]]:
                out.append((int(i), "several", 1 / a))
            else:  # the partner shows a symbol: only the marker fits
                out.append((int(i), "one", 1.0))
    return out


def summary(values: list[float], threshold: float) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"reveals": 0}
    q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
    return {"reveals": int(v.size), "mean": round(float(v.mean()), 4), "p10": round(float(q10), 4), "median": round(float(q50), 4),
            "p90": round(float(q90), 4), "at_threshold": round(float((v >= threshold).mean()), 4)}  # fmt: skip


def study(label: str, path: str, prompts: list[list[int]], samples: int, threshold: float, seed: int) -> dict[str, Any]:
    """One model's confidences at its reveals, by class, beside the calibrated model's at the same reveals."""
    task, model = BuiltinTask(), load_model(path)
    cfg = SamplerConfig(strategy="static", block_size=task.config.word_length, max_new_tokens=task.config.max_new_tokens,
                        steps_per_block=task.config.word_length, temperature=1.0, logits_top_k=0)  # fmt: skip
    rows = [p for p in prompts for _ in range(samples)]
    out = sample(model, rows, cfg, seeds=[seed + j for j in range(len(rows))])
    seen: dict[str, list[float]] = {c: [] for c in CLASSES}
    truth: dict[str, list[float]] = {c: [] for c in CLASSES}
    valid = 0
    for r, prompt in enumerate(rows):
        valid += task.is_valid(prompt, out.tokens[r])
        for i, kind, calibrated in reveal_classes(task, prompt, out.tokens[r], out.reveal_step[r]):
            seen[kind].append(float(out.confidence[r, i]))
            truth[kind].append(calibrated)
    total = sum(len(v) for v in seen.values())
    return {
        "model": label, "responses": len(rows), "validity": round(valid / len(rows), 4),
        "share_one": round(len(seen["one"]) / max(total, 1), 4),
        "confidence": {c: summary(seen[c], threshold) for c in CLASSES},
        "calibrated": {c: summary(truth[c], threshold) for c in CLASSES},
        "at_threshold_all": round(sum(v >= threshold for c in CLASSES for v in seen[c]) / max(total, 1), 4),
        "calibrated_at_threshold_all": round(sum(v >= threshold for c in CLASSES for v in truth[c]) / max(total, 1), 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="label=PATH or label=builtin (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N prompts of the split")
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    prompts = [list(p) for p in BuiltinTask().prompts(args.split)][: args.limit]
    models = [spec.split("=", 1) for spec in args.model]
    result = {
        "split": args.split, "prompts": len(prompts), "samples_per_prompt": args.samples_per_prompt, "threshold": args.threshold,
        "models": [study(label, path, prompts, args.samples_per_prompt, args.threshold, args.seed) for label, path in models],
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
