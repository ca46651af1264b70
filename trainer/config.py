"""`DistillConfig`: every setting of a `t3d-distill` run, in one nested frozen dataclass.

The dataclasses are the single source of truth: defaults, ranges (checked in
`__post_init__`) and help (the one-line docstring under each field, which the CLI
shows). A config file (TOML or YAML) and the command-line flags fill the same
dataclass through the mechanism every command shares (`TREE`, a `t3d.dllm.options`
tree), in that order, so a flag overrides the file and the file overrides the default.
Keys are the command-line option names (`max-steps` or `max_steps`), either flat or
grouped in section tables (`[optim] lr = 1e-5`).

Presets are such files shipped in `trainer/presets/` (`--preset NAME`), the lowest layer
above the defaults: defaults < preset < config file < flags. `builtin` (the built-in
task's tuned recipe) is the preset when --model is `builtin`; for any other model it is
`auto`, which picks `paper-2b`, `paper-4b` or `paper-8b` (the official T3D recipe, its lr
scaled to the size) from the parameter count of a published family's checkpoint (SDAR,
LLaDA, Dream), read from its safetensors headers without loading a weight, and `none` for
the networks t3d builds itself; `paper` is the official configuration exactly; `none` is
the dataclass defaults alone.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3d.dllm.cli import load_config_file
from t3d.dllm.errors import UserError
from t3d.dllm.families import family_for_model_type
from t3d.dllm.loading import LoadConfig, read_json, resolve_model_path
from t3d.dllm.weights import parameter_count, weight_files
from t3d.dllm.options import OptionTree, as_dict, inline
from t3d.trainer import sharding
from t3d.trainer.lora import LoraConfig
from t3d.trainer.memory_plan import parse_size
from t3d.trainer.objectives import ObjectiveConfig
from t3d.trainer.states import StatesConfig
from t3d.trainer.tracking import TrackingConfig


def _one_of(flag: str, value: str, known: tuple[str, ...]) -> None:
    """`value` is one of a registry's keys, or a one-line error naming the flag and the keys."""
    listed = f"{', '.join(known[:-1])} or {known[-1]}" if len(known) > 1 else known[0]
    _check(value in known, f"{flag} must be {listed}, got {value!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which trajectories to read and how."""

    path: str = "./runs/trajectories"
    """Trajectory dataset directory written by t3d-collect."""
    filter: str | None = None
    """SQL condition on the row columns that keeps a row (polars sql_expr), e.g. `correct == true`, `num_steps <= 8`."""
    max_prompt_len: int = 0
    """Drop rows whose prompt has more tokens than this; 0 keeps all."""
    max_response_len: int = 0
    """Drop rows whose response (up to and including EOS) is longer than this; 0 keeps all."""
    skip_bad_shards: bool = False
    """Skip shards that fail their checksum (and say which) instead of stopping."""
    verify: bool = True
    """Check every shard's checksum before training (reads the whole dataset once)."""
    shuffle_shards: int = 8
    """Shards shuffled together at a time: memory holds this many shards, rows mix across them."""

    def __post_init__(self) -> None:
        _check(bool(self.path), "--data must name a directory")
        lengths_ok = self.max_prompt_len >= 0 and self.max_response_len >= 0
        _check(lengths_ok, "--max-prompt-len and --max-response-len must be >= 0")
        _check(self.shuffle_shards >= 1, f"--shuffle-shards must be >= 1, got {self.shuffle_shards}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The starting student (also the first reference)."""

    path: str = "builtin"
    """Checkpoint directory of the starting student and reference, or `builtin`."""
    load: LoadConfig = inline(LoadConfig)
    """How it loads (--family, --dtype, --trust-remote-code)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    block_size: int = 0
    """Response block size of the states; 0: the dataset's sampler block size, else the model's."""
    force_block_size: bool = False
    """Train with a --block-size that is not a multiple of the block size the model was trained with (SDAR's config.json block_size)."""

    def __post_init__(self) -> None:
        _check(bool(self.path), "--model must name a checkpoint directory or `builtin`")
        _check(self.block_size >= 0, f"--block-size must be >= 0, got {self.block_size}")

    # The load settings, read as the model's own (`cfg.model.dtype`) where the trainer builds the student.
    @property
    def family(self) -> str | None:
        return self.load.family

    @property
    def dtype(self) -> str:
        return self.load.dtype

    @property
    def trust_remote_code(self) -> bool:
        return self.load.trust_remote_code


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with a cosine schedule and linear warm-up."""

    lr: float = 1e-4
    """Peak learning rate (the built-in preset's 3e-4 suits the tiny model; real checkpoints: 1.5e-5, 1e-5, 7e-6 for the paper-2b/4b/8b presets)."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to norms and biases)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.999
    """AdamW second-moment decay."""
    warmup_steps: int = 20
    """Optimizer steps of linear warm-up before the cosine decay to --min-lr-ratio of the peak; one over a quarter of the run is cut to a tenth of it (said at the start)."""
    min_lr_ratio: float = 0.0
    """Where the cosine decay ends, as a share of --lr (the official recipe: 0.1)."""
    decay_all: bool = False
    """Apply weight decay to every parameter, norms and biases too (the official code); default: matrices only."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0 and self.grad_clip >= 0, "--weight-decay and --grad-clip must be >= 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)")
        _check(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Steps, batches, checkpoints."""

    out: str = "./runs/student"
    """Output directory: checkpoints/, student/ (the final model), metrics.jsonl."""
    max_steps: int = 1000
    """Optimizer steps to train for (a resumed run counts from the start)."""
    batch_size: int = 8
    """Rows per micro-batch on each worker."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch: int = 0
    """Rows per optimizer step over all workers; > 0 sets --grad-accum to global / (batch size x workers)."""
    epochs: float = 0.0
    """Passes over the data; > 0 sets --max-steps to ceil(epochs x rows / global batch)."""
    seed: int = 0
    """Seed of the data order, the training states and the initial RNG."""
    save_every: int = 200
    """Save a checkpoint every N optimizer steps (and always at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep on disk."""
    resume: bool = False
    """Continue from the latest checkpoint in --out (exactly: same data, RNG, optimizer)."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`."""
    bf16: bool = True
    """bf16 autocast on CUDA (never on CPU, where it is slow)."""
    progress: bool = True
    """Show a progress bar."""
    memory_budget: str = "auto"
    """Memory one device may use (e.g. 24GiB): a run whose planned peak exceeds it is refused before loading; auto: the CUDA device's memory, on CPU the available memory over the workers; off: no check (trainer/memory_plan.py)."""

    def __post_init__(self) -> None:
        _check(bool(self.out), "--out must name a directory")
        if self.memory_budget not in ("auto", "off"):
            parse_size(self.memory_budget)
        _check(self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1")
        _check(self.global_batch >= 0 and self.epochs >= 0, "--global-batch and --epochs must be >= 0")
        _check(self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}")
        _check(self.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        device_ok = self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda")
        _check(device_ok, f"--device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class ReferenceConfig:
    """The frozen reference of DDO."""

    round_every: int = 0
    """Copy the student into the reference every N optimizer steps (self-play rounds); 0: never."""

    def __post_init__(self) -> None:
        _check(self.round_every >= 0, f"--round-every must be >= 0, got {self.round_every}")


@dataclass(frozen=True, kw_only=True)
class DistConfig:
    """Data-parallel workers."""

    num_workers: int = 1
    """Training processes; more than 1 runs Ray Train (gloo on CPU, NCCL on GPU)."""
    strategy: str = "ddp"
    """With more than 1 worker: `ddp` (a whole copy per worker) or `fsdp` (FSDP2: weights, gradients, optimizer state and the reference sharded)."""
    address: str | None = None
    """Ray cluster to join (e.g. `auto` or `10.0.0.1:6379`); default: start a local Ray."""
    cpus_per_worker: int = 1
    """CPUs Ray reserves per worker (also its torch thread count on CPU)."""
    gpus_per_worker: int = -1
    """GPUs per worker: -1 uses one each when the cluster has GPUs, 0 forces CPU."""
    offload: bool = False
    """Keep the weights, gradients and optimizer state (and the reference) in CPU memory, the optimizer step on the CPU (FSDP2's CPUOffloadPolicy; with more than 1 worker it needs --strategy fsdp, on 1 worker FSDP2 runs over that one process)."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, f"--num-workers must be >= 1, got {self.num_workers}")
        _one_of("--strategy", self.strategy, tuple(sharding.STRATEGIES))
        _check(not self.offload or sharding.shards(self.strategy, self.num_workers, offload=True),
               f"--offload needs --strategy {sharding.SHARDED} with {self.num_workers} workers (FSDP2 offloads its shards)")
        _check(self.cpus_per_worker >= 1, f"--cpus-per-worker must be >= 1, got {self.cpus_per_worker}")
        _check(self.gpus_per_worker in (-1, 0, 1), "--gpus-per-worker must be -1, 0 or 1")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Everything a `t3d-distill` run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    """The trajectory dataset."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting student."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters on a frozen base instead of full fine-tuning (`--lora-r`)."""
    states: StatesConfig = field(default_factory=StatesConfig)
    """Training states."""
    loss: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """The objective: `kind`, a registered objective's name (docs/OBJECTIVES.md), and its weights."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, batches, checkpoints."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Reference model refresh."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Workers."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers (TensorBoard, W&B, MLflow) beside metrics.jsonl."""
    preset: str = "none"
    """Named recipe under the config file and flags (trainer/presets/); default: builtin for --model builtin, else auto (paper-2b below 3B parameters, paper-4b below 6B, else paper-8b). Recorded resolved."""

    @property
    def rows_per_step(self) -> int:
        """Global batch: rows per optimizer step over all workers."""
        return self.train.batch_size * self.train.grad_accum * self.dist.num_workers


PRESETS_DIR = Path(__file__).parent / "presets"
NO_PRESET = "none"
AUTO = "auto"
SIZE_PRESETS = ((3e9, "paper-2b"), (6e9, "paper-4b"), (float("inf"), "paper-8b"))
"""(parameters below, preset): the size classes `auto` picks from (trainer/presets/paper-*.toml say why)."""
MAX_WARMUP_SHARE = 0.25
"""A warm-up over this share of the run is cut to a tenth of the run (`effective_warmup`)."""

# one option per leaf field (t3d.dllm.options); three fields take their section's name as flag, LoRA's its prefix
RENAMES = {"data.path": "data", "model.path": "model", "loss.kind": "loss",
           **{f"lora.{name}": f"lora_{name}" for name in ("r", "alpha", "dropout", "targets")}}
TREE = OptionTree(DistillConfig, rename=RENAMES, metavars=dict.fromkeys(("data", "model", "out"), "PATH"))


def presets() -> list[str]:
    """Names of the shipped presets (files in trainer/presets/), `none` and `auto` first."""
    return [NO_PRESET, AUTO, *sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))]


def preset_values(name: str) -> dict[str, Any]:
    """The flat option values of preset `name` ({} for `none`); one-line errors for an unknown name or key."""
    if name == NO_PRESET:
        return {}
    if name == AUTO:
        raise UserError("preset auto stands for a size class: resolve it with a model (`size_preset`)")
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r} (known: {', '.join(presets())})")
    try:
        values = TREE.flatten(load_config_file(path), str(path))
    except UserError as err:
        raise UserError(f"preset {name}: {err}") from None
    if "preset" in values:
        raise UserError(f"preset {name}: a preset cannot name another preset ({path})")
    return values


def default_preset(model_path: str) -> str:
    """`builtin` for the built-in teacher, else `auto` (the checkpoint's size class, `size_preset`)."""
    return "builtin" if model_path == "builtin" else AUTO


def size_preset(model_path: str) -> tuple[str, str]:
    """(preset, why) for `--preset auto`: the size class of the checkpoint's parameter count (no weight is read)."""
    if model_path == "builtin":
        return "builtin", "the built-in model"
    path = resolve_model_path(model_path)
    if not path.is_dir():
        raise UserError(f"--preset auto reads the model's size, but the model directory is not found: {path}")
    model_type = read_json(path / "config.json").get("model_type") if (path / "config.json").is_file() else None
    if family_for_model_type(str(model_type)) is None:  # a network t3d built itself (the built-in task's), or remote code
        return NO_PRESET, f"model_type {model_type!r} is not a published DLLM family: the dataclass defaults"
    count = parameter_count(weight_files(path))
    name = next(preset for below, preset in SIZE_PRESETS if count < below)
    return name, f"{count / 1e9:.2f}B parameters in {path}"


def effective_warmup(cfg: DistillConfig) -> tuple[int, str | None]:
    """(warm-up steps the scheduler uses, a note when they differ from --warmup-steps).

    A warm-up longer than a quarter of the run (20 steps in a 5-step run never let the lr reach
    its peak) is cut to a tenth of the run, and the run says so.
    """
    warmup, steps = cfg.optim.warmup_steps, cfg.train.max_steps
    if warmup <= MAX_WARMUP_SHARE * steps:
        return warmup, None
    short = steps // 10
    return short, (f"warm-up shortened from {warmup} to {short} steps: {warmup} is more than a quarter of this "
                   f"{steps}-step run (the lr would {'never reach' if warmup >= steps else 'barely reach'} its peak "
                   f"{cfg.optim.lr:g}); --warmup-steps up to {int(MAX_WARMUP_SHARE * steps)} is kept as given")  # fmt: skip


def build_config(*layers: Mapping[str, Any], source: str = "config values") -> DistillConfig:
    """Defaults, then each layer of option values in order (later wins): file, then flags.

    A layer holds flat option names or `[section]` tables (a config file's keys); None is
    "not given". A `preset` key in any layer (the last one wins) puts that preset's values
    under all the layers; without one, no preset applies (`load_config` picks the default one).
    """
    return _build([TREE.flatten(layer, source) for layer in layers])


def _build(flat_layers: list[dict[str, Any]]) -> DistillConfig:
    name, model = NO_PRESET, ModelConfig().path
    for layer in flat_layers:
        name, model = layer.get("preset", name), layer.get("model", model)
    if name == AUTO:
        name = size_preset(model)[0]
    preset = preset_values(name)
    if any("max_steps" in layer for layer in flat_layers) and not any("epochs" in layer for layer in flat_layers):
        preset.pop("epochs", None)  # --max-steps given over a preset's --epochs (paper: 30): the steps asked for
    return _resolve_global_batch(TREE.build(preset, *flat_layers, {"preset": name}))


def _resolve_global_batch(cfg: DistillConfig) -> DistillConfig:
    """--global-batch G > 0: --grad-accum = G / (batch size x workers), which must divide."""
    train = cfg.train
    if not train.global_batch:
        return cfg
    per_pass = train.batch_size * cfg.dist.num_workers
    accum, rest = divmod(train.global_batch, per_pass)
    _check(rest == 0 and accum >= 1, f"--global-batch {train.global_batch} is not a multiple of --batch-size "
           f"{train.batch_size} x {cfg.dist.num_workers} workers")  # fmt: skip
    _check(train.grad_accum in (1, accum), f"--grad-accum {train.grad_accum} contradicts --global-batch "
           f"{train.global_batch} (= {accum} x {per_pass}); pass --global-batch 0 to set --grad-accum")  # fmt: skip
    return dataclasses.replace(cfg, train=dataclasses.replace(train, grad_accum=accum))


def load_config(config_file: str | Path | None, flags: Mapping[str, Any]) -> DistillConfig:
    """The run's config: defaults < preset < config file < flags that were given (None = not given).

    Without a `preset` in the file or the flags, the preset is `default_preset` of the model;
    `auto` is resolved here to the model's size class, and the run says which and why.
    """
    file = TREE.flatten(load_config_file(config_file), str(config_file))
    given = TREE.flatten(flags, "the flags")
    model = str(given.get("model", file.get("model", ModelConfig().path)))
    if "preset" not in given and "preset" not in file:
        given["preset"] = default_preset(model)
    if given.get("preset", file.get("preset")) == AUTO:
        given["preset"], why = size_preset(model)
        print(f"preset auto: {given['preset']} ({why})")
    return _build([file, given])


def to_dict(cfg: DistillConfig) -> dict[str, Any]:
    """Nested plain dict (checkpoints, Ray workers), one table per section as config files write it."""
    return as_dict(cfg)


def from_dict(values: Mapping[str, Any]) -> DistillConfig:
    """Inverse of `to_dict` (checkpoints, Ray workers); unknown keys are an error."""
    return build_config(values, source="a saved config")


def save_config(cfg: DistillConfig, path: Path) -> None:
    path.write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def differences_from_preset(cfg: DistillConfig) -> list[str]:
    """`option value (preset: value)` for every setting that differs from cfg's preset."""
    base, mine = TREE.values(build_config({"preset": cfg.preset})), TREE.values(cfg)
    return [f"{name.replace('_', '-')} {mine[name]!r} (preset: {value!r})" for name, value in base.items() if mine[name] != value]


def describe_changes(old: DistillConfig, new: DistillConfig) -> list[str]:
    """`section.field: old -> new` for every setting that differs (said on resume)."""
    changes = [f"preset: {old.preset!r} -> {new.preset!r}"] if old.preset != new.preset else []
    a, b = TREE.values(old), TREE.values(new)
    for opt in TREE.options:
        if opt.path and a[opt.name] != b[opt.name]:
            changes.append(f"{opt.key}: {a[opt.name]!r} -> {b[opt.name]!r}")
    return changes
