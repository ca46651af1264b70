"""`t3d-pretrain`: train the built-in masked-diffusion teacher on the built-in task, on CPU.

The objective is the MDLM / LLaDA one: mask a random share t of the response, predict
the masked tokens, weight each masked token's cross-entropy by 1/t, average per
example. Part of every batch is shaped like the sampler's state instead (earlier blocks
clean, the current block with k of its B tokens masked, later blocks fully masked,
loss on the current block), because those are the only states the sampler ever shows
the network. Positions after the response's `<eos>` are trained to predict `<eos>`
(LLaDA's convention), so the teacher says where it stops.

The run writes a Hugging Face directory (config.json with the t3d fields,
model.safetensors, tokenizer files), measures the teacher through the project's own
loader and sampler on held-out prompts, and writes MODEL_CARD.md with the command,
seed, time and the measured numbers.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from t3d.dllm.errors import UserError
from t3d.dllm.families import get_family
from t3d.dllm.model import DiffusionLM
from t3d.dllm.options import OptionTree
from t3d.dllm.task import BuiltinTask, TaskConfig


@dataclass(frozen=True, kw_only=True)
class TeacherNetConfig:
    """The teacher network: a tiny Llama made bidirectional by the 4D attention mask."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must divide by it)."""
    intermediate_size: int = 384
    """Width of the MLP."""
    max_position_embeddings: int = 32
    """Longest prompt + response the model accepts."""

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) < 1:
            raise UserError("model sizes must be positive")
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")


@dataclass(frozen=True, kw_only=True)
class TeacherTrainConfig:
    """Optimisation and noise schedule."""

    steps: int = 1200
    """Optimizer steps (training stops earlier if time_limit_minutes runs out)."""
    batch_size: int = 256
    """Examples per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a share of the peak (cosine decay)."""
    warmup_steps: int = 200
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    block_fraction: float = 0.5
    """Share of each batch shaped like the sampler's blocks; the rest is uniform random masking."""
    eps: float = 1e-3
    """Smallest mask ratio t of the random-masking examples (t ~ U(eps, 1))."""
    time_limit_minutes: float = 19.0
    """Wall-clock budget of the optimisation loop; the learning-rate decay follows it when it runs out before the steps."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise UserError("steps and batch_size must be positive, warmup_steps >= 0")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UserError("lr must be positive and min_lr_ratio in [0, 1]")
        if not 0.0 <= self.block_fraction <= 1.0:
            raise UserError(f"block_fraction must be in [0, 1], got {self.block_fraction}")
        if not 0.0 < self.eps < 1.0:
            raise UserError(f"eps must be in (0, 1), got {self.eps}")
        if self.time_limit_minutes <= 0:
            raise UserError("time_limit_minutes must be positive")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """One `t3d-pretrain` run."""

    out_dir: Path = Path("builtin-teacher")
    """Where the checkpoint, tokenizer and MODEL_CARD.md go (dllm/builtin rebuilds the shipped teacher)."""
    seed: int = 0
    """Seed of the weights' initialisation, the batches and the noise."""
    task_seed: int = 0
    """Seed of the built-in task (alphabets, prompt splits); the shipped task uses 0."""
    threads: int = 2
    """torch CPU threads (on a busy shared machine set OMP_WAIT_POLICY=PASSIVE, or use 1)."""
    eval_samples: int = 16
    """Responses per held-out test prompt in the final measurement (0: skip)."""
    model: TeacherNetConfig = field(default_factory=TeacherNetConfig)
    """The network."""
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    """The optimisation."""

    def __post_init__(self) -> None:
        if self.threads < 1 or self.eval_samples < 0:
            raise UserError("threads must be >= 1 and eval_samples >= 0")


TREE = OptionTree(PretrainConfig, rename={"train.time_limit_minutes": "minutes"})  # the command's options


# ----- model ------------------------------------------------------------------------


def build_network(task: BuiltinTask, cfg: TeacherNetConfig, seed: int) -> torch.nn.Module:
    """A freshly initialised LlamaForCausalLM whose config carries the fields t3d's loader reads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(task.vocabulary),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=task.pad_id,
        eos_token_id=task.eos_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    config.mask_token_id = task.mask_id
    config.t3d_family = "bidirectional"
    config.t3d_block_size = task.config.word_length
    config.t3d_max_new_tokens = task.config.max_new_tokens
    config.t3d_task_seed = task.seed
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def as_model(net: torch.nn.Module, task: BuiltinTask) -> DiffusionLM:
    """The network in training as a `DiffusionLM`, so it is called (mask, positions, alignment)
    exactly as the loader's model of the saved checkpoint will be."""
    config = net.config
    return DiffusionLM(
        net=net, family=get_family(config.t3d_family), mask_id=task.mask_id, pad_id=task.pad_id, eos_id=task.eos_id,
        vocab_size=config.vocab_size, max_length=config.max_position_embeddings, name="builtin (training)",
        fingerprint="", path="", block_size=config.t3d_block_size, max_new_tokens=config.t3d_max_new_tokens,
    )  # fmt: skip


def check_bidirectional(model: DiffusionLM, task: BuiltinTask) -> None:
    """Changing the last token must change the first position's logits, or the mask was ignored."""
    ids = torch.tensor([task.prompt_ids([0, 1]) + [task.mask_id] * task.config.max_new_tokens])
    changed = ids.clone()
    changed[0, -1] = task.eos_id
    attention = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        a, b = model.logits(ids, attention), model.logits(changed, attention)
    if torch.allclose(a[0, 0], b[0, 0]):
        raise RuntimeError("attention is not bidirectional: a later token did not reach an earlier position")


# ----- batches and loss ---------------------------------------------------------------


@dataclass
class MaskedBatch:
    """One training batch; the response occupies the last L columns."""

    input_ids: torch.Tensor  # (N, P + L) int64, prompt left-padded, masked response
    attention: torch.Tensor  # (N, P + L) bool, False on padding
    targets: torch.Tensor  # (N, L) int64, the clean response (<eos>-filled)
    weights: torch.Tensor  # (N, L) float32, per-token loss weight (0 where not masked)


def random_masking(n: int, length: int, eps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MDLM noise: t ~ U(eps, 1) (stratified over the batch), each position masked w.p. t.

    Returns the mask (n, L) bool and weights 1 / (t L) on masked positions, so a row's
    loss is an unbiased estimate of its mean per-token cross-entropy.
    """
    u = (rng.random() + np.arange(n) / max(n, 1)) % 1.0
    t = eps + (1.0 - eps) * rng.permutation(u)  # (n,)
    masked = rng.random((n, length)) < t[:, None]  # (n, L)
    return masked, masked / (t[:, None] * length)


def block_masking(words: np.ndarray, block: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sampler-shaped noise: blocks before b clean, k of block b's tokens masked, later blocks masked.

    b is uniform over the word blocks and the block holding `<eos>`; k is uniform in
    1..B, i.e. t = k / B, and the weight 1 / (t B) = 1 / k sits on block b only.
    """
    n = len(words)
    current = rng.integers(0, words + 1)  # (n,) block index
    k = rng.integers(1, block + 1, size=n)  # (n,) masked tokens in the current block
    rank = rng.random((n, block)).argsort(axis=1).argsort(axis=1)  # (n, B) random ranks
    in_block = rank < k[:, None]  # (n, B)
    pos_block = np.arange(length) // block  # (L,)
    masked = pos_block[None, :] > current[:, None]  # (n, L) later blocks
    cols = current[:, None] * block + np.arange(block)[None, :]  # (n, B)
    rows = np.arange(n)[:, None]
    masked[rows, cols] = in_block
    weights = np.zeros((n, length))
    weights[rows, cols] = in_block / k[:, None]
    return masked, weights


def make_batch(task: BuiltinTask, prompts: list[list[int]], cfg: TeacherTrainConfig, rng: np.random.Generator) -> MaskedBatch:
    """Draw prompts, their true responses, and the noise (block-shaped rows first)."""
    tc = task.config
    chosen = [prompts[i] for i in rng.integers(len(prompts), size=cfg.batch_size)]
    targets = task.sample_batch(chosen, rng)  # (N, L)
    n_block = round(cfg.block_fraction * cfg.batch_size)
    words = np.array([len(p) for p in chosen[:n_block]])
    m_block, w_block = block_masking(words, tc.word_length, tc.max_new_tokens, rng)
    m_rand, w_rand = random_masking(cfg.batch_size - n_block, tc.max_new_tokens, cfg.eps, rng)
    masked, weights = np.concatenate([m_block, m_rand]), np.concatenate([w_block, w_rand])
    prompt_ids = np.full((cfg.batch_size, tc.max_words), task.pad_id, dtype=np.int64)
    prompt_real = np.zeros((cfg.batch_size, tc.max_words), dtype=bool)
    for row, prompt in enumerate(chosen):  # left padding, as the sampler pads
        prompt_ids[row, tc.max_words - len(prompt) :] = prompt
        prompt_real[row, tc.max_words - len(prompt) :] = True
    noisy = np.where(masked, task.mask_id, targets)
    return MaskedBatch(
        input_ids=torch.from_numpy(np.concatenate([prompt_ids, noisy], axis=1)),
        attention=torch.from_numpy(np.concatenate([prompt_real, np.ones_like(masked)], axis=1)),
        targets=torch.from_numpy(targets),
        weights=torch.from_numpy(weights.astype(np.float32)),
    )


def diffusion_loss(logits: torch.Tensor, batch: MaskedBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted masked cross-entropy averaged over examples.

    logits: (N, L, V) response logits; batch.targets (N, L); batch.weights (N, L).
    """
    ce = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # (N, L)
    loss = (ce * batch.weights).sum() / len(ce)
    ce, logits = ce.detach(), logits.detach()
    scored = batch.weights > 0  # (N, L)
    hits = (logits.argmax(-1) == batch.targets) & scored
    count = max(int(scored.sum()), 1)
    return loss, {"loss": loss.item(), "masked_ce": float((ce * scored).sum()) / count, "masked_acc": float(hits.sum()) / count}


def lr_at(step: int, cfg: TeacherTrainConfig, time_used: float = 0.0) -> float:
    """Linear warm-up, then cosine from lr to min_lr_ratio * lr.

    Progress is the larger of the share of steps done and the share of the time budget
    used (`time_used`), so on a busy machine the decay still completes before the
    deadline instead of being cut off at a high learning rate.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_used))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----- training -----------------------------------------------------------------------


def train_network(model: DiffusionLM, task: BuiltinTask, cfg: PretrainConfig) -> dict[str, Any]:
    """The optimisation loop; returns what the model card reports about it."""
    from tqdm import tqdm

    tc = cfg.train
    prompts = task.prompts("train")  # the teacher never sees val/test prompts
    rng = np.random.default_rng([cfg.seed, 2])
    opt = build_optimizer(model.net, tc)
    model.net.train()
    start, budget = time.monotonic(), 60 * tc.time_limit_minutes
    running: dict[str, float] = {}
    bar = tqdm(range(tc.steps), desc="pretrain", unit="step", dynamic_ncols=True)
    step = 0
    for step in bar:
        time_used = (time.monotonic() - start) / budget
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc, time_used)
        metrics = train_step(model, opt, make_batch(task, prompts, tc, rng), tc.grad_clip)
        running = {k: 0.98 * running.get(k, v) + 0.02 * v for k, v in metrics.items()}
        if step % 25 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        if time_used >= 1.0:
            bar.write(f"time limit of {tc.time_limit_minutes} min reached at step {step + 1} of {tc.steps}")
            break
    bar.close()
    model.net.eval()
    seconds = round(time.monotonic() - start, 1)
    return {"steps_done": step + 1, "train_seconds": seconds, **{k: round(v, 4) for k, v in running.items()}}


def build_optimizer(net: torch.nn.Module, cfg: TeacherTrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms (1-D parameters)."""
    decay = [p for p in net.parameters() if p.ndim >= 2]
    other = [p for p in net.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def train_step(model: DiffusionLM, opt: torch.optim.Optimizer, batch: MaskedBatch, grad_clip: float) -> dict[str, float]:
    length = batch.targets.shape[1]
    logits = model.logits(batch.input_ids, batch.attention)[:, -length:]  # (N, L, V)
    loss, metrics = diffusion_loss(logits, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.net.parameters(), grad_clip)
    opt.step()
    return metrics


# ----- measuring ------------------------------------------------------------------------

CALIBRATION = (
    # (label, steps_per_block, temperature)
    ("1 token/step (temperature 1)", 4, 1.0),
    ("2 tokens/step (temperature 1)", 2, 1.0),
    ("1 step/block (temperature 1)", 1, 1.0),
    ("1 token/step, greedy", 4, 0.0),
    ("1 step/block, greedy", 1, 0.0),
)


def measure(model: Any, task: BuiltinTask, prompts: list[list[int]], samples: int, seed: int = 1234) -> list[dict[str, Any]]:
    """Validity and speed of `model` at each CALIBRATION setting, `samples` responses per prompt.

    Row r of prompt p uses seed `seed + r * len(prompts) + p`, so the numbers are reproducible.
    """
    from t3d.dllm.sampling import SamplerConfig, sample

    batch = [p for _ in range(samples) for p in prompts]
    seeds = [seed + i for i in range(len(batch))]
    rows = []
    for label, steps, temperature in CALIBRATION:
        cfg = SamplerConfig(
            max_new_tokens=task.config.max_new_tokens, block_size=task.config.word_length,
            steps_per_block=steps, temperature=temperature, logits_top_k=0,
        )
        begin = time.perf_counter()
        out = sample(model, batch, cfg, seeds)
        seconds = time.perf_counter() - begin
        rows.append({
            "setting": label, "steps_per_block": steps, "temperature": temperature, "responses": len(batch),
            "tokens_per_s": float(out.response_length.sum()) / seconds, "nfe": out.nfe,
            **diversity(task, batch, out.tokens),
        })
    return rows


def diversity(task: BuiltinTask, prompts: list[list[int]], tokens: np.ndarray) -> dict[str, float]:
    """Validity and the task's diversity measures, averaged over the distinct prompts."""
    from t3d.dllm.task import diversity_report, mean_report

    by_prompt: dict[tuple[int, ...], list[list[int]]] = {}
    for prompt, response in zip(prompts, tokens.tolist()):
        by_prompt.setdefault(tuple(prompt), []).append(response)
    summary = mean_report([diversity_report(task, list(p), rs) for p, rs in by_prompt.items()])
    keep = ("valid_rate", "distinct_ratio", "marker_first_rate", "positional_tv", "positional_tv_baseline")
    return {"validity": summary["valid_rate"], **{k: round(summary[k], 4) for k in keep[1:]}}


def calibration_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | steps per block | responses | validity | tokens/s | marker first | positional TV (true samples) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['steps_per_block']} | {r['responses']} | {100 * r['validity']:.1f}% | {r['tokens_per_s']:.0f} "
            f"| {_num(r['marker_first_rate'])} | {r['positional_tv']:.3f} ({r['positional_tv_baseline']:.3f}) |"
        )
    return "\n".join(lines)


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def current_command() -> str:
    """The command line of this run, with the thread-wait setting when one was given."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY",) if k in os.environ)
    return (env + " " if env else "") + "t3d-pretrain " + shlex.join(sys.argv[1:])


def write_card(out_dir: Path, record: dict[str, Any], task: BuiltinTask) -> None:
    """MODEL_CARD.md from the run record (training.json): how to rebuild, what it measured."""
    cfg, info, rows = record["config"], record["train"], record["calibration"]
    tc = cfg["train"]
    cut = " (the time budget ran out first, so the learning-rate decay followed the clock)" if info["steps_done"] < tc["steps"] else ""
    q = task.config.marker_second_prob
    text = f"""# builtin: the tiny masked-diffusion teacher of the built-in task

A {record['parameters'] / 1e6:.2f}M-parameter Llama (bidirectional through the 4D attention mask, family
`bidirectional`) trained from scratch on CPU by `t3d-pretrain` on the built-in task's
`train` prompts only. Loaded by `load_model("builtin")`.

## Rebuild

```
{record['command']}
```

Seed {cfg['seed']}, task seed {cfg['task_seed']}, torch threads {cfg['threads']}: {info['steps_done']} of {tc['steps']} steps of
{tc['batch_size']} examples in {info['train_seconds'] / 60:.1f} minutes of wall-clock time on a 2-core CPU shared
with other jobs{cut}. Final running loss {info.get('loss', math.nan):.3f}, masked-token accuracy
{info.get('masked_acc', math.nan):.3f}. On a busy machine, `OMP_WAIT_POLICY=PASSIVE` (or `--threads 1`) avoids
two spinning OpenMP threads fighting other jobs for the cores (measured here: 3-12x slower steps without it).

## The task

```
{task.describe()}
```

## Measured on the held-out `test` prompts

{len(task.prompts('test'))} test prompts x {cfg['eval_samples']} seeds each, through `load_model` and the project sampler
(`t3d.dllm.sample`: static strategy, blocks of {task.config.word_length}, {task.config.max_new_tokens} new tokens, temperature 1
unless greedy). Validity is exact (`BuiltinTask.is_valid`). Tokens/s counts response tokens up to
and including `<eos>`, every response in one batch, on the shared CPU (indicative only).
"Marker first" is the share of words with the marker first (truth: {1 - q:.2f}); positional TV is the
mean per-position total-variation distance from the true marginals, next to what the same
number of true samples reaches.

{calibration_table(rows)}

Stated floor for `tests/dllm/test_builtin_teacher.py`: validity at one token per step >= 95%.

Why the numbers look like this:
- Sampling a word's 4 tokens independently from the true marginals is valid with probability
  (1-q)^2 + q^2 = {(1 - q) ** 2 + q**2:.2f} per word, and the true argmax writes the marker at both of a
  word's first two positions, so one-step-per-block greedy decoding is never valid for a
  perfect model.
- At one token per step the marker comes first ~95% of the time instead of {1 - q:.0%}: the static
  sampler reveals the most confident proposal, and a proposed marker at position 0
  (probability {1 - q:.1f}) beats everything else, so even exact conditionals give P(marker second) =
  q^2 (1 + (1-q)q + ((1-q)q)^2) ~ 0.05. Compare students with the teacher under the same
  sampler, and with the truth via `t3d.dllm.task.diversity_report`.

## Config

```json
{json.dumps(cfg, indent=2)}
```
"""
    (out_dir / "MODEL_CARD.md").write_text(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "out_dir"}
    return str(value) if isinstance(value, Path) else value


# ----- the command ------------------------------------------------------------------------


def run(cfg: PretrainConfig) -> list[dict[str, Any]]:
    """Train, save, reload through the project's loader, measure, write the card."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(previous)  # a library call must not change its caller's threads


def _run(cfg: PretrainConfig) -> list[dict[str, Any]]:
    from t3d.dllm.tokenizer import save_tokenizer

    task = BuiltinTask(seed=cfg.task_seed, config=TaskConfig())
    net = build_network(task, cfg.model, cfg.seed)
    params = sum(p.numel() for p in net.parameters())
    model = as_model(net, task)
    check_bidirectional(model, task)
    tc = cfg.train
    splits = [len(task.prompts(s)) for s in ("train", "val", "test")]
    print(f"task: {len(task.vocabulary)} tokens; prompts train/val/test {splits}")
    print(f"model: {params / 1e6:.2f}M parameters; {tc.steps} steps x {tc.batch_size} examples "
          f"({tc.steps * tc.batch_size / 1e6:.2f}M sequences), budget {tc.time_limit_minutes} min, {cfg.threads} threads")
    info = train_network(model, task, cfg)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(cfg.out_dir, safe_serialization=True)
    save_tokenizer(task.tokenizer(), cfg.out_dir)
    record = {"command": current_command(), "parameters": params, "train": info, "config": _jsonable(asdict(cfg))}
    return finish(cfg.out_dir, record, task)


def finish(out_dir: Path, record: dict[str, Any], task: BuiltinTask) -> list[dict[str, Any]]:
    """Measure the saved checkpoint through the project's loader, write training.json and the card."""
    from t3d.dllm.loading import load_model

    rows: list[dict[str, Any]] = []
    if record["config"]["eval_samples"]:
        rows = measure(load_model(out_dir), task, task.prompts("test"), record["config"]["eval_samples"])
        print(calibration_table(rows))
    record = {**record, "calibration": rows}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    write_card(out_dir, record, task)
    print(f"wrote {out_dir}")
    return rows


def _app():
    import typer

    app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
    panels = {(): "Run", ("model",): "Model", ("train",): "Train"}
    app.command(help=__doc__)(TREE.command(run, panel=lambda opt: panels[opt.path]))
    return app


def main() -> None:
    _app()()


if __name__ == "__main__":
    main()
