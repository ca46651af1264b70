"""The memory plan: the expected peak per device of a `t3d-distill` run, before any weight loads.

Read from the checkpoint's config.json and safetensors headers (`ModelShape.read`), the
dataset's longest prompt and response (`data_lengths`) and the run's options (`Setup.of`),
it splits the peak the way DeepSpeed's memory estimator and torchtitan count it, in the
trainer's own byte counts:

- weights: elements x the training dtype's bytes; FSDP shards them over the workers, plus the
  unsharded working set (the root module's embeddings and head, two decoder layers);
- gradients and optimizer: the trainable elements x the dtype's bytes, and AdamW's two
  moments in the weights' dtype (so float32 full fine-tuning is the 16 bytes per parameter of
  DeepSpeed's estimate: 4 + 4 + 8; bfloat16 is 2 + 2 + 4: t3d keeps no float32 master copy);
  LoRA trains peft's float32 adapters only; FSDP shards both; `--offload` keeps them on the CPU
  (FSDP2 over one process on one worker), where they count in the peak when the CPU is the device;
- reference: DDO's frozen copy of the student (none for LoRA: the base with its adapters off);
- activations: what autograd saves in one micro-batch's student forward, per token and layer
  (`_saved_per_token`: the residual streams, norms, q/k/v and attention output as SDPA's fused
  kernels save them, the MLP's four intermediates), plus the additive attention masks of all
  micro-batches of a step (built before the first forward); with gradient checkpointing, the
  layers' inputs and one layer recomputed;
- LM head: `logprobs.linear_logprobs`: the softmax it keeps for the backward (when small
  enough), a chunk's buffers (`logprobs.chunk_rows`) and the float32 vocab x hidden gradient;
- step temporaries: the optimizer's (CPU AdamW: ~2 copies of the largest tensor; CUDA's fused
  AdamW none).

Gradients are set to None at each step, so they and the activations do not peak together:
peak = weights + optimizer + reference + max(activations + LM head (+ gradients when
accumulating), gradients + step temporaries) + runtime (the CUDA context). Checked
against measured peaks on CPU (tests/trainer/test_memory_plan.py, benchmarks/memory_plan.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t3d.dllm.errors import UserError
from t3d.trainer import sharding

if TYPE_CHECKING:
    from t3d.trainer.config import DistillConfig

GIB = 1 << 30
CUDA_RUNTIME = int(0.75 * GIB)
"""The CUDA context and library workspaces: device memory outside torch's allocator."""
LORA_SUGGESTED_RANK = 16
"""The rank the refusal proposes for a LoRA student."""
SUPERVISED_SHARE = 0.5
"""Share of a micro-batch's response positions a state supervises (its masked ones, half on average):
sizes the LM head's chunk only where all of them fit in one chunk (small vocabularies)."""
WORKER_COUNTS = (2, 4, 8)
"""FSDP worker counts the refusal tries."""
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}  # fmt: skip
_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def parse_size(text: str, option: str = "--memory-budget") -> int:
    """`24GiB`, `24 GB`, `1.5TiB`, `8000000000` -> bytes; a one-line error naming the option otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise UserError(f"{option} must be a size like 24GiB, 80GB or 512MiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What the plan needs of a checkpoint (from config.json and safetensors headers only)."""

    parameters: int
    """Stored elements (every tensor of the weight files)."""
    largest: int
    """Elements of the largest tensor (CPU AdamW's temporaries are sized by it)."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    qk_norm: bool
    """Per-head q/k norms (Qwen3, SDAR): two more saved tensors per layer."""
    tied: bool
    """The LM head shares the embeddings."""
    copies: int
    """Response copies in the training input (the family's `TrainingLayout.copies`)."""

    @property
    def layer_parameters(self) -> int:
        """Elements of one decoder layer (all but embeddings, head and final norm, over the layers)."""
        outside = self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden
        return max(0, self.parameters - outside) // max(1, self.layers)

    @property
    def root_parameters(self) -> int:
        """Elements outside the decoder layers: FSDP's root unit (embeddings, final norm, head)."""
        return self.parameters - self.layers * self.layer_parameters

    @classmethod
    def read(cls, path: str | Path, family: str | None = None, trust_remote_code: bool = False) -> ModelShape:
        from t3d.dllm.loading import build_config, check_checkpoint_dir, read_json, resolve_family, resolve_model_path
        from t3d.dllm.weights import open_weights, weight_files

        resolved = resolve_model_path(path)
        check_checkpoint_dir(resolved)
        raw = read_json(resolved / "config.json")
        fam = resolve_family(raw, family, resolved)
        config, _ = build_config(raw, fam, resolved, trust_remote_code)
        shapes = {}
        for file in weight_files(resolved):
            with open_weights(file) as fh:
                shapes |= {name: fh.get_slice(name).get_shape() for name in fh.keys()}
        sizes = [math.prod(s) for s in shapes.values()]
        heads = int(config.num_attention_heads)
        return cls(
            parameters=sum(sizes), largest=max(sizes), vocab=int(config.vocab_size), hidden=int(config.hidden_size),
            layers=int(config.num_hidden_layers), heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            intermediate=int(config.intermediate_size), qk_norm=any("q_norm" in n or "k_norm" in n for n in shapes),
            tied=bool(getattr(config, "tie_word_embeddings", False)), copies=fam.training_layout.copies,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Setup:
    """The run's options that decide its memory (one device's share)."""

    device: str = "cpu"
    """`cuda` or `cpu`: CUDA runs the fused AdamW and has a context outside torch's allocator."""
    dtype_bytes: int = 4
    """Bytes per element of the training weights (their gradients and AdamW moments alike)."""
    activation_bytes: int = 4
    """Bytes per saved activation element (2 under bf16 autocast or with bf16 weights)."""
    trainable: int | None = None
    """Trainable elements: None for full fine-tuning, else LoRA's adapter count."""
    reference: bool = True
    """The objective keeps DDO's frozen reference."""
    reference_adapter: bool = False
    """LoRA with rounds: the reference is a frozen copy of the adapters."""
    workers: int = 1
    fsdp: bool = False
    """FSDP2 shards weights, gradients, optimizer and reference over the workers."""
    offload: bool = False
    """FSDP2's CPUOffloadPolicy: sharded weights, gradients and optimizer live in CPU memory."""
    batch: int = 8
    """Rows per micro-batch on each worker."""
    accum: int = 1
    """Micro-batches per optimizer step."""
    prompt: int = 64
    """Longest prompt, in tokens."""
    response: int = 256
    """Response length L, in tokens."""
    checkpointing: bool = False

    @classmethod
    def of(cls, cfg: DistillConfig, shape: ModelShape, prompt: int, response: int, device: str) -> Setup:
        """The setup of a run with options `cfg` on `device` (`cuda` or `cpu`)."""
        from t3d.trainer.objectives import OBJECTIVES

        dtype = cfg.model.dtype if cfg.model.dtype != "auto" else _auto_dtype(cfg.model.path, device)
        autocast = device == "cuda" and cfg.train.bf16
        fsdp = sharding.shards(cfg.dist.strategy, cfg.dist.num_workers, cfg.dist.offload)
        needs_reference = OBJECTIVES[cfg.loss.kind].needs_reference
        return cls(
            device=device, dtype_bytes=_BYTES[dtype], activation_bytes=2 if autocast else _BYTES[dtype],
            trainable=_adapter_count(cfg) if cfg.lora.enabled else None, reference=needs_reference,
            reference_adapter=cfg.lora.enabled and needs_reference and cfg.reference.round_every > 0,
            workers=cfg.dist.num_workers, fsdp=fsdp, offload=fsdp and cfg.dist.offload, batch=cfg.train.batch_size,
            accum=cfg.train.grad_accum, prompt=prompt, response=response,
            checkpointing=cfg.model.gradient_checkpointing,
        )  # fmt: skip


def _auto_dtype(path: str, device: str) -> str:
    """--dtype auto: the checkpoint's stored dtype on CUDA (from a safetensors header), float32 on CPU."""
    if device != "cuda":
        return "float32"
    from t3d.dllm.loading import resolve_model_path
    from t3d.dllm.weights import checkpoint_dtype

    return str(checkpoint_dtype(resolve_model_path(path))).removeprefix("torch.")


def _adapter_count(cfg: DistillConfig) -> int:
    from t3d.dllm.loading import read_json, resolve_family, resolve_model_path
    from t3d.trainer.lora import adapter_parameter_count

    path = resolve_model_path(cfg.model.path)
    raw = read_json(path / "config.json")
    return adapter_parameter_count(raw, cfg.lora, resolve_family(raw, cfg.model.family, path))


@dataclass(frozen=True)
class MemoryPlan:
    """Expected bytes per device, by part (see the module's docstring for how they add up)."""

    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    lm_head: int
    step_temporaries: int
    runtime: int
    accumulating: bool = False
    host: int = 0
    """With --offload: what the CPU holds per worker instead (sharded weights, gradients, optimizer, reference)."""
    host_is_device: bool = False
    """Training on the CPU: the offloaded bytes are the same memory, so they count in the peak."""

    @property
    def peak(self) -> int:
        held = self.gradients if self.accumulating else 0
        backward = self.activations + self.lm_head + held
        step = self.gradients + self.step_temporaries
        host = self.host if self.host_is_device else 0
        return self.weights + self.optimizer + self.reference + max(backward, step) + self.runtime + host

    def table(self, title: str) -> str:
        """A few aligned lines: each part and the peak."""
        rows = [(f.name.replace("_", " "), getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("accumulating", "host", "host_is_device")]  # fmt: skip
        lines = [f"memory plan ({title}), per device:"]
        lines += [f"  {name:<17}{size(value):>11}" for name, value in rows]
        lines.append(f"  {'peak':<17}{size(self.peak):>11}  (weights + optimizer + reference"
                     " + max(activations + lm head, gradients + step temporaries) + runtime"
                     f"{' + on the CPU' if self.host and self.host_is_device else ''})")  # fmt: skip
        if self.host:
            lines.append(f"  {'on the CPU':<17}{size(self.host):>11}  (--offload: per worker)")
        return "\n".join(lines)


def size(n: int) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / (1 << 20):.1f} MiB"


def _saved_per_token(shape: ModelShape, act: int) -> int:
    """Bytes autograd saves per token in one decoder layer's forward.

    In the activations' dtype: two residual streams and two norm outputs (4h), q, k, v (K/V
    repeated to every head for the additive mask), the attention output (4 x heads x head_dim),
    the MLP's gate, up, activation and product (4 x intermediate), and with q/k norms their
    inputs; in float32: the two normalised streams RMSNorm computes in float32 (2h) and the
    q/k norms' own.
    """
    attention = shape.heads * shape.head_dim
    qk = (shape.heads + shape.kv_heads) * shape.head_dim if shape.qk_norm else 0
    return act * (4 * shape.hidden + 4 * attention + 4 * shape.intermediate + qk) + 4 * (2 * shape.hidden + qk)


def activation_bytes(shape: ModelShape, setup: Setup) -> int:
    """Saved activations of one micro-batch's student forward, with the step's attention masks."""
    tokens = setup.batch * (setup.prompt + shape.copies * setup.response)
    layer = tokens * _saved_per_token(shape, setup.activation_bytes)
    inputs = tokens * shape.hidden * setup.activation_bytes * shape.layers  # what checkpointing keeps
    trunk = inputs + layer if setup.checkpointing else layer * shape.layers
    final_norm = tokens * shape.hidden * (4 + setup.activation_bytes)
    length = setup.prompt + shape.copies * setup.response
    masks = setup.accum * setup.batch * length * length * setup.dtype_bytes  # (B, 1, T, T) additive, each micro-batch
    return trunk + final_norm + masks


def lm_head_bytes(shape: ModelShape, setup: Setup, head_trained: bool) -> int:
    """The chunked head (`logprobs.linear_logprobs`): the softmax it keeps from forward to backward
    when it fits `logprobs.KEEP_BYTES`; then the larger of the forward's chunk (its float32
    logits and their shifted copy) and the backward's (a chunk's gradient, or without a kept
    softmax the recomputed logits and their exp; 25 % more in a 16-bit compute dtype), with
    the float32 V x H gradient when the head trains (and the weight's 16-bit copy)."""
    import torch

    from t3d.trainer.logprobs import balanced, chunk_rows, kept_bytes

    half = setup.activation_bytes == 2
    dtype = torch.bfloat16 if half else torch.float32
    supervised = int(SUPERVISED_SHARE * setup.batch * setup.response)
    kept = kept_bytes(supervised, shape.vocab, dtype)
    chunk = balanced(supervised, chunk_rows(shape.vocab, dtype)) * shape.vocab * (5 if half else 4)
    grad = shape.vocab * shape.hidden * (6 if half else 4) if head_trained else 0
    return kept + max(2 * chunk, (1 if kept else 2) * chunk + grad)


def plan(shape: ModelShape, setup: Setup) -> MemoryPlan:
    """The expected peak per device of `setup` on a model of `shape`."""
    lora = setup.trainable is not None
    trainable = setup.trainable if lora else shape.parameters
    state_bytes = 4 if lora else setup.dtype_bytes  # peft keeps adapters in float32
    shards = setup.workers if setup.fsdp else 1
    weights = shape.parameters * setup.dtype_bytes // shards
    if setup.fsdp:  # the root unit stays gathered through forward and backward; one layer gathered, one prefetched
        weights += (shape.root_parameters + 2 * shape.layer_parameters) * setup.dtype_bytes * (shards - 1) // shards
    gradients = trainable * state_bytes // shards
    optimizer = 2 * trainable * state_bytes // shards
    reference = 0
    if setup.reference:
        copy = 0 if lora else shape.parameters * setup.dtype_bytes // shards
        reference = trainable * 4 if setup.reference_adapter else copy
    largest = min(trainable, shape.largest)
    temporaries = 0 if setup.device == "cuda" else 2 * largest * state_bytes // shards
    host = 0
    if setup.offload:  # the shards live on the CPU; the device holds the gathered working set and gradients in flight
        host = shape.parameters * setup.dtype_bytes // shards + gradients + optimizer + reference
        working = (shape.root_parameters + 2 * shape.layer_parameters) * setup.dtype_bytes
        weights, gradients, optimizer, reference, temporaries = working, working, 0, 0, 0
    return MemoryPlan(
        weights=weights, gradients=gradients, optimizer=optimizer, reference=reference,
        activations=activation_bytes(shape, setup), lm_head=lm_head_bytes(shape, setup, head_trained=not lora),
        step_temporaries=temporaries, runtime=CUDA_RUNTIME if setup.device == "cuda" else 0,
        accumulating=setup.accum > 1, host=host, host_is_device=setup.device == "cpu",
    )  # fmt: skip


# ---- the run's plan, its device and the refusal ----------------------------------------------


def data_lengths(data: Any) -> tuple[int, int] | None:
    """(longest prompt, response length) of the dataset `data` (a `DataConfig`), or None when it
    cannot be read (the loader then says why). Reads two list lengths per row, no array."""
    try:
        import polars as pl

        from t3d.storage_schemas import Dataset

        lengths = Dataset.open(Path(data.path).expanduser()).scan().select(
            pl.col("prompt_ids").list.len().max().alias("prompt"),
            pl.col("response_ids").list.len().max().alias("response"),
        ).collect()  # fmt: skip
        prompt, response = int(lengths["prompt"][0]), int(lengths["response"][0])
    except Exception:  # noqa: BLE001  (a missing or damaged dataset is the loader's to report)
        return None
    return (min(prompt, data.max_prompt_len) if data.max_prompt_len else prompt), response


def run_device(cfg: DistillConfig) -> str:
    """`cuda` or `cpu`: where the run's workers train (--device, auto: CUDA when present here)."""
    import torch

    name = cfg.train.device
    if name == "auto":
        return "cuda" if torch.cuda.is_available() and cfg.dist.gpus_per_worker != 0 else "cpu"
    return name.split(":")[0]


def device_budget(cfg: DistillConfig, device: str) -> tuple[int, str] | None:
    """(bytes one device may use, what they are) or None when unknown (a Ray cluster's CPU workers)."""
    if cfg.train.memory_budget not in ("", "auto"):
        return parse_size(cfg.train.memory_budget), "--memory-budget"
    if device == "cuda":
        import torch

        index = int(cfg.train.device.split(":")[1]) if ":" in cfg.train.device else 0
        props = torch.cuda.get_device_properties(index)
        return props.total_memory, f"{props.name}'s memory"
    if cfg.dist.address is not None:
        return None
    available = _meminfo("MemAvailable")
    share = f" over {cfg.dist.num_workers} workers" if cfg.dist.num_workers > 1 else ""
    return available // cfg.dist.num_workers, f"this machine's available memory{share}"


def _meminfo(field: str) -> int:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def plan_run(cfg: DistillConfig, shape: ModelShape, lengths: tuple[int, int], device: str) -> MemoryPlan:
    return plan(shape, Setup.of(cfg, shape, *lengths, device))


def _with(cfg: DistillConfig, **changes: Any) -> DistillConfig:
    """cfg with options changed by their flag names (`lora_r=16`, `num_workers=2`), checked as flags are."""
    from t3d.trainer.config import TREE

    return TREE.build(TREE.values(cfg) | changes)


def _flags(changes: dict[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in changes.items())


def candidates(cfg: DistillConfig) -> list[dict[str, Any]]:
    """Option changes that lower the peak, one idea each (the refusal re-plans every one)."""
    out: list[dict[str, Any]] = []
    if not cfg.lora.enabled:
        out.append({"lora_r": LORA_SUGGESTED_RANK})
    if not cfg.model.gradient_checkpointing:
        out.append({"gradient_checkpointing": True})
    fsdp = sharding.shards(cfg.dist.strategy, cfg.dist.num_workers)
    out += [{"num_workers": n, "strategy": sharding.SHARDED} for n in WORKER_COUNTS if n > cfg.dist.num_workers or not fsdp]
    if not cfg.dist.offload and not cfg.lora.enabled:  # one worker offloads under FSDP2 over itself
        out.append(({} if fsdp or cfg.dist.num_workers == 1 else {"strategy": sharding.SHARDED}) | {"offload": True})
    batch = cfg.train.batch_size
    while batch > 1:
        batch //= 2
        out.append({"batch_size": batch, "grad_accum": cfg.train.grad_accum * (cfg.train.batch_size // batch)})
    return out


def fitting_options(
    cfg: DistillConfig, shape: ModelShape, lengths: tuple[int, int], device: str, budget: int
) -> list[str]:
    """The `candidates` whose re-planned peak fits `budget`, as flags with their peak: the first
    worker count and the largest batch that fit, each idea once; when none fits alone, the first
    pair of them that fits together."""
    found, ideas = [], set()
    for change in candidates(cfg):
        workers = "num_workers" in change and "offload" not in change
        idea = "batch" if "batch_size" in change else "workers" if workers else _flags(change)
        peak = _peak(cfg, change, shape, lengths, device)
        if idea not in ideas and peak <= budget:
            ideas.add(idea)
            found.append(f"{_flags(change)} ({size(peak)})")
    if found:
        return found
    options = candidates(cfg)
    for i, first in enumerate(options):
        for second in options[i + 1 :]:
            if first.keys() & second.keys():
                continue
            if (peak := _peak(cfg, first | second, shape, lengths, device)) <= budget:
                return [f"{_flags(first | second)} ({size(peak)})"]
    return []


def _peak(cfg: DistillConfig, change: dict[str, Any], shape: ModelShape, lengths: tuple[int, int], device: str) -> float:
    """The re-planned peak with `change` applied; infinite for options this model cannot take."""
    try:
        return plan_run(_with(cfg, **change), shape, lengths, device).peak
    except UserError:  # e.g. LoRA on a network only its own code runs
        return math.inf


def check_run(cfg: DistillConfig, log=print) -> MemoryPlan | None:
    """Print the plan; refuse (a one-line UserError) a run whose peak exceeds its device's memory,
    naming the options that would fit. None when the dataset's lengths cannot be read."""
    if cfg.train.memory_budget == "off":
        return None
    lengths = data_lengths(cfg.data)
    if lengths is None:
        return None
    shape = ModelShape.read(cfg.model.path, cfg.model.family, cfg.model.trust_remote_code)
    device = run_device(cfg)
    result = plan_run(cfg, shape, lengths, device)
    what = (f"{shape.parameters:,} parameters, {'LoRA r ' + str(cfg.lora.r) if cfg.lora.enabled else 'full'}, "
            f"batch {cfg.train.batch_size} x prompt {lengths[0]} + {shape.copies} x {lengths[1]} tokens, "
            f"{device}")  # fmt: skip
    log(result.table(what))
    budget = device_budget(cfg, device)
    if budget is None or result.peak <= budget[0]:
        return result
    fits = fitting_options(cfg, shape, lengths, device, budget[0])
    advice = (f"these would fit: {'; '.join(fits)}" if fits else "no option or pair of options fits: combine "
              "--lora-r, --gradient-checkpointing, a smaller --batch-size and more devices")
    source = budget[1] if budget[1] == "--memory-budget" else f"{budget[1]}; --memory-budget states another"
    raise UserError(f"the planned peak {size(result.peak)} per device exceeds {size(budget[0])} "
                    f"({source}, off skips the check); {advice}")  # fmt: skip
