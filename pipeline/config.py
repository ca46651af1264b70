"""What one `t3d-collect` run does, as nested frozen dataclasses.

The command line and a `--config` TOML/YAML file fill the same dataclasses through the
shared `t3d.dllm.options` mechanism: every leaf field is one option (`--max-new-tokens`
= `max_new_tokens`), its help is the one-line docstring under the field, and values come
from defaults < file < flags. The sampler's
own `SamplerConfig` is embedded as is, and the prompt encoding (`PromptEncoding`) and how
the teacher loads (`LoadConfig`) inline (`t3d.dllm.options.inline`: their flags and keys
are the section's own), so their defaults and help are not copied here.

`dataset_key()` is the part of the config that decides what the rows contain; a re-run
into the same output directory must agree on it, while the cluster settings (workers,
GPUs, address) may change between runs without changing a single value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.loading import LoadConfig
from t3d.dllm.options import Option, OptionTree, as_dict, inline
from t3d.dllm.prompt_encoding import PromptEncoding
from t3d.dllm.prompt_files import FieldMap, require_prompts
from t3d.dllm.sampling import SAMPLER_SETTINGS_ADDED_LATER, SamplerConfig
from t3d.dllm.scoring import AUTO, SCORER_NAMES

RECORD_STATES = ("none", "dense")
ON_LONG_PROMPT = ("skip", "error")
PATH_OPTIONS = {"out", "prompts", "model"}


@dataclass(frozen=True, kw_only=True)
class PromptConfig:
    """Where the prompts come from and how they become token ids."""

    prompts: str | None = None
    """Prompt file (JSONL, JSON list, Parquet or a datasets save_to_disk folder) in a published layout (GSM8K, MATH-500, Hendrycks MATH, MBPP, HumanEval) or with prompt/question (+ answer or tests); builtin:train for the built-in task (the default only for the built-in teacher)."""
    prompt_field: str | None = None
    """Field holding the prompt, for a layout t3d does not recognise (then fields are not guessed)."""
    answer_field: str | None = None
    """Field holding the reference answer (`#### 42`, `\\boxed{42}` or bare), graded by math."""
    tests_field: str | None = None
    """Field holding code tests (a list of assert statements), graded by code."""
    setup_field: str | None = None
    """Field holding code run before the tests (imports, helpers), for a layout t3d does not recognise."""
    limit: int | None = None
    """Use only the first N prompts of the source."""
    encoding: PromptEncoding = inline(PromptEncoding)
    """How text prompts become token ids (recorded in the manifest; eval's `--like` reads it back)."""
    on_long_prompt: str = "skip"
    """What to do with a prompt too long for the model with its response: `skip` (counted in the manifest) or `error`."""
    scorer: str = AUTO
    """What fills the `correct` column: auto (per record: its code tests, else its answer), builtin, math (math-verify), code (tests in a sandbox), exact."""

    def __post_init__(self) -> None:
        if self.scorer not in SCORER_NAMES:
            raise UserError(f"scorer must be one of {', '.join(SCORER_NAMES)}, got {self.scorer!r}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1, got {self.limit}")
        if self.on_long_prompt not in ON_LONG_PROMPT:
            raise UserError(f"on_long_prompt must be one of {', '.join(ON_LONG_PROMPT)}, got {self.on_long_prompt!r}")

    def fields(self) -> FieldMap:
        """The fields named by --prompt-field / --answer-field / --tests-field / --setup-field (none: each record's layout is recognised)."""
        return FieldMap(prompt=self.prompt_field, answer=self.answer_field, tests=self.tests_field, setup=self.setup_field)


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """The model whose trajectories are recorded."""

    model: str = "builtin"
    """Checkpoint directory of the teacher, or `builtin` for the shipped tiny teacher."""
    load: LoadConfig = inline(LoadConfig)
    """How the workers load it (--family, --dtype, --trust-remote-code)."""
    force_block_size: bool = False
    """Decode with a --block-size other than the one the teacher was trained with (SDAR's config.json block_size)."""


@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """How many responses per prompt, what is stored beside them, and the sampler."""

    rollouts_per_prompt: int = 4
    """Responses sampled per prompt (R); each has its own seed."""
    record_states: str = "none"
    """Store the masked state at every step: `none` (rebuilt from reveal steps) or `dense`."""
    batch_size: int = 64
    """Rows (prompt x rollout) per sampler call on a worker."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Decoding settings of the teacher."""

    def __post_init__(self) -> None:
        if self.rollouts_per_prompt < 1:
            raise UserError(f"rollouts_per_prompt must be at least 1, got {self.rollouts_per_prompt}")
        if self.record_states not in RECORD_STATES:
            raise UserError(f"record_states must be one of {', '.join(RECORD_STATES)}, got {self.record_states!r}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}")

    def sampler_config(self) -> SamplerConfig:
        """The sampler settings with `record_states` applied."""
        return dataclasses.replace(self.sampler, record_states=self.record_states == "dense")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where the work runs; none of it changes a stored value."""

    num_workers: int = 1
    """Ray actors, each loading the teacher once (one per GPU on a GPU cluster)."""
    gpus_per_worker: float | None = None
    """GPUs per actor; default 1 when the Ray cluster has GPUs, else 0."""
    cpus_per_worker: float = 1.0
    """CPUs per actor; on CPU it is also the actor's torch thread count."""
    address: str | None = None
    """Join this Ray cluster (e.g. 10.0.0.1:6379); default: start a private local Ray."""
    max_retries: int = 2
    """Times a unit is retried on another actor after its actor was lost or it failed."""
    worker_timeout: float = 900.0
    """Seconds to wait for a worker to (re)start when none is running; then the run fails."""
    progress: bool = True
    """Show a progress bar."""
    code_workers: int = 1
    """Code samples each actor judges at once for the `correct` column, each in its own sandbox (threads waiting on them)."""

    def __post_init__(self) -> None:
        if self.code_workers < 1:
            raise UserError(f"code_workers must be at least 1, got {self.code_workers}")
        if self.num_workers < 1:
            raise UserError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise UserError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise UserError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.worker_timeout <= 0:
            raise UserError(f"worker_timeout must be > 0, got {self.worker_timeout}")


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """One `t3d-collect` run."""

    out: str = "./runs/trajectories"
    """Dataset directory (created; a re-run with the same settings resumes it)."""
    shard_size: int = 64
    """Prompts per shard; one shard is one work unit."""
    seed: int = 0
    """Global seed; each row's seed derives from (seed, prompt index, rollout)."""
    overwrite: bool = False
    """Delete a dataset already in --out that was collected with other settings, teacher or schema version."""
    prompts: PromptConfig = field(default_factory=PromptConfig)
    """Prompt source."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher model."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollouts and sampler."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Ray settings."""

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise UserError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")
        require_prompts(self.teacher.model, self.prompts.prompts, "train")  # before any model or prompt is read

    def dataset_key(self) -> dict[str, Any]:
        """The settings that decide the rows: a resumed run must match them exactly."""
        key = to_dict(self)
        for name in ("out", "overwrite", "cluster"):
            key.pop(name)
        # Where the files are does not matter: the prompts' digest (added by collect) and
        # the teacher's fingerprint (checked by `output.open_output`) stand for them.
        del key["prompts"]["prompts"], key["teacher"]["model"], key["teacher"]["trust_remote_code"]
        del key["teacher"]["force_block_size"]  # a permission, not a setting: the block size itself is in the key
        if key["prompts"]["setup_field"] is None:  # added later: unset, the rows are what they were before it
            del key["prompts"]["setup_field"]
        sampler = key["rollout"]["sampler"]
        for name in SAMPLER_SETTINGS_ADDED_LATER:  # at its default, a decode is what it was before the setting existed
            if sampler[name] == getattr(SamplerConfig, name):
                del sampler[name]  # so datasets collected before it still resume
        return key


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config (JSON-ready), one table per section as config files write it."""
    return as_dict(cfg)


# --- one option per leaf field (t3d.dllm.options) ----------------------------------------

SAMPLER_FIELDS_NOT_OPTIONS = {"rollout.sampler.record_states"}  # set from RolloutConfig.record_states
TREE = OptionTree(CollectConfig, exclude=SAMPLER_FIELDS_NOT_OPTIONS, metavars=dict.fromkeys(PATH_OPTIONS, "PATH"))


def options() -> list[Option]:
    """Every leaf field of the config tree, depth first."""
    return TREE.options


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config file") -> CollectConfig:
    """A CollectConfig from config-file values overridden by the flags that were given (not None)."""
    return TREE.build(TREE.flatten(file_values, source), flag_values)


def cli_command(body: Callable[[CollectConfig], Any]) -> Callable[..., Any]:
    """A typer command with one option per config field (help = the field's docstring).

    Every option defaults to None, meaning "not given", so a config file's value or the
    dataclass default applies; `body(config)` runs under `run_cli` (one-line errors).
    """
    return TREE.command(body, panel=lambda opt: (opt.path[0] if opt.path else "output").capitalize())
