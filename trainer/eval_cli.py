"""`t3d-eval`: quality and speed of labelled models at few steps against the teacher at full steps.

A thin entry point: it parses options, loads the models and prompts, and hands the work
to `t3d.trainer.evaluate`; everything it prints or writes comes from there.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from t3d.dllm import DiffusionLM, SamplerConfig, UserError, load_model
from t3d.dllm.options import OptionTree, inline
from t3d.dllm.outdir import Output, claim
from t3d.dllm.prompt_files import FieldMap, require_prompts
from t3d.dllm.scoring import AUTO, Limits
from t3d.trainer.eval_prompts import load_prompts
from t3d.dllm.loading import LoadConfig
from t3d.dllm.reveal import STRATEGIES
from t3d.trainer import evaluate as ev
from t3d.trainer import grading
from t3d.dllm.block_checks import check_decode_block, check_steps_per_block
from t3d.trainer.tracking import TrackingConfig, check_available, open_trackers, record_metrics

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


GENERIC_DIRS = frozenset({"student", "distill", "model", "checkpoint", "checkpoints", "final", "latest", "output", "outputs",
                          "hf", "export"})  # fmt: skip
"""Directory names that say nothing about which model it is: a bare path is labelled after the nearest other name."""


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`label=PATH|builtin` -> (label, path); a bare path is labelled after its directory (see `path_label`)."""
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = path_label(spec), spec
    if not label.strip() or not path.strip():
        raise UserError(f"--model must look like label=PATH or label=builtin, got {spec!r}")
    return label.strip(), path.strip()


def path_label(path: str, depth: int = 1) -> str:
    """A readable label for a bare model path: its nearest directory name that is not generic.

    `/models/SDAR-4B-Chat` -> `SDAR-4B-Chat`; `runs/sdar-student/student` -> `sdar-student`.
    depth > 1 adds that many names above it, joined by `/` (to tell two such paths apart).
    """
    parts = [p for p in Path(path).expanduser().parts if p not in ("/", ".", "")] or [path]
    named = [i for i, part in enumerate(parts) if part.lower() not in GENERIC_DIRS]
    last = named[-1] if named else len(parts) - 1
    return "/".join(parts[max(0, last - depth + 1) : last + 1])


def unique_labels(specs: list[str]) -> list[tuple[str, str]]:
    """(label, path) per --model; bare paths whose labels collide take more parent directories until they differ."""
    parsed = [parse_model_spec(spec) for spec in specs]
    bare = [i for i, spec in enumerate(specs) if "=" not in spec]
    for depth in range(2, 8):
        labels = [label for label, _ in parsed]
        clashes = [i for i in bare if labels.count(labels[i]) > 1]
        if not clashes:
            break
        for i in clashes:
            parsed[i] = (path_label(parsed[i][1], depth), parsed[i][1])
    return parsed


def resolve_teacher(models: dict[str, DiffusionLM], requested: str | None) -> tuple[str, str]:
    """(the anchor's label, why): --teacher, else the model labelled `teacher`, else the first --model."""
    picked = ev.pick_teacher(models, requested)
    if picked is not None:
        return picked, "--teacher" if requested else "labelled teacher"
    return next(iter(models)), "the first --model; label one teacher=PATH or pass --teacher LABEL to choose"


def load_models(specs: list[str], device: str, load: LoadConfig = LoadConfig()) -> dict[str, DiffusionLM]:
    """Load each `label=PATH` once, in the order given; labels must be unique.

    `load` (family, dtype, remote code) applies to every model (defaults: each checkpoint's own).
    """
    models: dict[str, DiffusionLM] = {}
    for label, path in unique_labels(specs):
        if label in models:
            raise UserError(f"model label {label!r} is given twice")
        models[label] = load_model(path, family=load.family, trust_remote_code=load.trust_remote_code, device=device, dtype=load.dtype)
    return models


def describe_models(models: dict[str, DiffusionLM]) -> str:
    """`label (family, dtype)` of each model, for the run header."""
    return ", ".join(f"{label} ({m.family.name}, {str(m.dtype).removeprefix('torch.')})" for label, m in models.items())


def parse_int_list(text: str, option: str) -> list[int]:
    """`4,2,1` -> [4, 2, 1]; anything but positive integers is a one-line error naming the option."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{option} must be a comma-separated list of positive integers such as 4,2,1, got {text!r}")
    return values


def parse_strategies(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if not names or unknown:
        raise UserError(f"--strategy must name one or more of {', '.join(sorted(STRATEGIES))}, got {text!r}")
    return names


def halving(block_size: int) -> list[int]:
    """Default steps per block: B, B/2, ..., 1 (1, 2, 4, ... tokens per step)."""
    steps = [block_size]
    while steps[-1] > 1:
        steps.append(steps[-1] // 2)
    return steps


def run(cfg: EvalCommandConfig) -> ev.EvalReport | None:
    """The command's body: build, evaluate, report. Cheap checks come before loading anything."""
    p, o = cfg.prompts, cfg.output
    code_limits = code_sandbox_limits(p.code_timeout)
    if p.code_workers < 1:
        raise UserError(f"--code-workers must be at least 1, got {p.code_workers}")
    if o.grade is not None:
        if cfg.models.model or p.prompts:
            raise UserError("--grade grades the responses in a file and loads no model: drop --model and --prompts")
        run_grade(o.grade, p.scorer, o.json, o.samples, code_limits, p.fields(), p.code_workers)
        return None
    return run_decode(cfg, code_limits)


def run_decode(cfg: EvalCommandConfig, code_limits: Limits) -> ev.EvalReport:
    """Decode the prompts with every model at every setting, print the table, write the outputs asked for."""
    m, p, d, r, o = cfg.models, cfg.prompts, cfg.decode, cfg.run, cfg.output
    if p.limit is not None and p.limit < 1:
        raise UserError(f"--limit must be at least 1, got {p.limit}")
    steps = parse_int_list(d.steps_per_block, "--steps-per-block") if d.steps_per_block else None
    strategies = parse_strategies(d.strategy)
    check_available(cfg.tracking)  # a missing tracker library: one line, before any model loads
    specs = list(m.model) or ["teacher=builtin"]
    if d.block_size:  # else the first model's own block size, checked once it has loaded
        check_decode_settings(specs, d.block_size, steps or [], strategies, m.load.family, d.force_block_size)
    overrides = {k: v for k, v in dict(chat_template=p.chat_template, system_prompt=p.system_prompt, user_template=p.user_template).items() if v is not None}
    ev.PromptEncoding(**overrides)  # a bad template fails before any model loads
    like_encoding = ev.like_dataset(p.like) if p.like is not None else None
    prompt_set = load_prompts(p.prompts, p.limit, p.scorer, code_limits, p.fields(), code_workers=p.code_workers)
    for note in prompt_set.notes:  # the layout recognised, how rows are graded and which cannot be
        print(f"prompts: {note}", file=sys.stderr)
    models = load_models(specs, m.device, m.load)
    first = next(iter(models.values()))
    block = d.block_size or first.block_size or 4
    check_decode_settings(specs, block, steps or [], strategies, m.load.family, d.force_block_size)
    settings = ev.sampler_settings(
        block_size=block,
        max_new_tokens=d.max_new_tokens or first.max_new_tokens or 4 * block,
        steps_per_block=steps or halving(block),
        strategies=strategies,
        threshold=d.threshold,
        confidence=d.confidence,
        entropy_budget=d.entropy_budget,
        temperature=d.temperature,
        cache=d.cache,
    )
    anchor, why = resolve_teacher(models, r.teacher)
    config = dataclasses.replace(r, teacher=anchor, keep_samples=o.samples is not None)
    n = len(prompt_set.prompts)
    print(
        f"t3d-eval: {len(models)} model(s) x {len(settings)} setting(s) on {n} prompts x {r.samples_per_prompt} samples "
        f"= {n * r.samples_per_prompt} responses each ({prompt_set.source}); teacher: {anchor} ({why})",
        file=sys.stderr,
    )
    print(f"models: {describe_models(models)}", file=sys.stderr)
    encodings, notes = ev.resolve_encodings(models, like_encoding, str(p.like), overrides)
    if notes and any(q.ids is None for q in prompt_set.prompts):  # only text prompts are encoded
        print("\n".join(notes), file=sys.stderr)
    report = ev.evaluate(models, prompt_set, settings, config, on_record=done_lines(r.progress), encodings=encodings)
    print(ev.render_table(report))
    print("\n" + ev.render_legend(report))
    for path, write in ((o.json, ev.write_json), (o.plot, ev.save_plot), (o.samples, ev.write_samples)):
        if path is not None:
            print(f"wrote {write(report, path)}", file=sys.stderr)
    report_to_trackers(report, cfg.tracking, o.json)
    return report


def check_decode_settings(
    specs: list[str], block: int, steps: list[int], strategies: list[str], family: str | None, force: bool
) -> None:  # fmt: skip
    """The block size against each model's trained one (config.json only, no weights), the steps against the block."""
    for spec in specs:
        check_decode_block(parse_model_spec(spec)[1], block, family=family, force=force)
    for name in strategies:
        check_steps_per_block(block, steps, name)


def report_to_trackers(report: ev.EvalReport, tracking: TrackingConfig, json_path: Optional[Path]) -> None:
    """--report-to: every record's numbers as `model/setting/field` (the JSON's names) and each model's AUP as
    `model/aup`, in a run named after the output."""
    if not tracking.backends:
        return
    out, data = json_path.parent if json_path is not None else Path("runs/eval"), ev.report_dict(report)
    trackers = open_trackers(tracking, out, data["config"])
    scores = {f"{label}/aup": s["aup"] for label, s in ((data["aup"] or {}).get("models") or {}).items() if s}
    trackers.log(record_metrics(data["records"]) | scores, step=0)
    trackers.close()
    print(f"reported to {', '.join(tracking.backends)}", file=sys.stderr)


def done_lines(progress: bool) -> Callable[[ev.EvalRecord], None] | None:
    """One stderr line per finished (model, setting) where no bar can show (a log file), none where the bar shows."""
    if not progress or sys.stderr.isatty():
        return None
    tic = time.perf_counter()
    return lambda r: print(f"  done {r.model} {r.setting} ({time.perf_counter() - tic:.0f} s)", file=sys.stderr, flush=True)


def code_sandbox_limits(timeout: float) -> Limits:
    if timeout <= 0:
        raise UserError(f"--code-timeout must be positive, got {timeout:g}")
    return Limits(timeout_s=timeout)


def run_grade(
    path: Path, scorer: str, json_path: Optional[Path], samples: Optional[Path], code_limits: Limits, fields: FieldMap = FieldMap(),
    code_workers: int = 1,
) -> None:
    """`--grade FILE`: judge responses produced elsewhere, print the table, write the outputs asked for."""
    lines = grading.read_responses(path, fields)
    report = grading.grade(lines, scorer, str(path), code_limits, code_workers)
    print(f"t3d-eval: graded {len(lines)} responses from {path}: {report.grading.describe()}", file=sys.stderr)
    print(grading.render_grade_table(report))
    if json_path is not None:
        print(f"wrote {grading.write_grade_json(report, json_path)}", file=sys.stderr)
    if samples is not None:
        print(f"wrote {grading.write_graded_samples(lines, report, samples)}", file=sys.stderr)


# --- the command's options: one dataclass tree (t3d.dllm.options) ---------------------------


@dataclass(frozen=True, kw_only=True)
class ModelsConfig:
    """Which models are compared and how they load."""

    model: tuple[str, ...] = ()
    """label=PATH|builtin or a bare PATH (named after its directory), repeatable; teacher: label `teacher`, else the first. None: teacher=builtin."""
    device: str = "cpu"
    """torch device for the models."""
    load: LoadConfig = inline(LoadConfig)
    """How every --model loads (--family, --dtype, --trust-remote-code)."""


@dataclass(frozen=True, kw_only=True)
class EvalPromptsConfig:
    """The prompts, how they are encoded and judged."""

    prompts: Path | None = None
    """Prompt file (JSONL, JSON, Parquet or a datasets save_to_disk folder) in a published layout (GSM8K, MATH-500, Hendrycks MATH, MBPP, HumanEval) or with prompt/question (+ answer or tests); builtin:test for the built-in task (the default only for built-in models)."""
    prompt_field: str | None = None
    """Field holding the prompt, for a layout t3d does not recognise (then fields are not guessed); also read by --grade."""
    answer_field: str | None = None
    """Field holding the reference answer (`#### 42`, `\\boxed{42}` or bare), graded by math."""
    tests_field: str | None = None
    """Field holding code tests (a list of assert statements), graded by code."""
    setup_field: str | None = None
    """Field holding code run before the tests (imports, helpers), for a layout t3d does not recognise."""
    limit: int | None = None
    """Use only the first N prompts."""
    scorer: str = AUTO
    """How responses are judged: auto (per record: its code tests, else its answer), builtin, math (math-verify), code (tests in a sandbox), exact."""
    like: Path | None = None
    """Encode prompts as this dataset's manifest records (chat template, system prompt, user template, special tokens). Default: each model's own, from its t3d.json."""
    chat_template: bool | None = None
    """Override: render prompts with the tokenizer's chat template (when it has one)."""
    system_prompt: str | None = None
    """Override: a system turn before each prompt."""
    user_template: str | None = None
    """Override: the user turn, {prompt} standing for the prompt, or a preset: plain, reason-boxed."""
    code_timeout: float = Limits.timeout_s
    """Seconds each code sample may run in the sandbox (wall clock; CPU limit one more)."""
    code_workers: int = 1
    """Code samples judged at once (a decode's and --grade's), each in its own sandbox (threads waiting on them)."""

    def fields(self) -> FieldMap:
        """The fields named by --prompt-field / --answer-field / --tests-field / --setup-field (none: each record's layout is recognised)."""
        return FieldMap(prompt=self.prompt_field, answer=self.answer_field, tests=self.tests_field, setup=self.setup_field)


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """The sampler settings compared (the defaults of the rest are SamplerConfig's)."""

    block_size: int | None = None
    """Tokens per block B (default: the first model's, else 4)."""
    max_new_tokens: int | None = None
    """Response length, a multiple of B (default: the first model's, else 4 B)."""
    steps_per_block: str | None = None
    """Comma list for the static strategy, e.g. 4,2,1 (default: B, B/2, ..., 1)."""
    strategy: str = SamplerConfig.strategy
    """static, threshold, dream, entropy_bounded, or several as static,threshold (each unscheduled one adds one setting)."""
    threshold: float = SamplerConfig.threshold
    """Confidence threshold of the threshold strategy."""
    confidence: str = SamplerConfig.confidence
    """What ranks the masked positions in every setting: probability, margin or entropy; see SamplerConfig.confidence."""
    entropy_budget: float = SamplerConfig.entropy_budget
    """Nats the entropy_bounded strategy may reveal per step; see SamplerConfig.entropy_budget."""
    temperature: float = SamplerConfig.temperature
    """Proposal temperature; 0 is greedy."""
    cache: str = SamplerConfig.cache
    """KV cache: auto (exact for block-causal models), none, prefix or dual (approximate, bidirectional models); see SamplerConfig.cache."""
    force_block_size: bool = False
    """Decode with a --block-size other than the one a model was trained with (SDAR's config.json block_size)."""


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """What is written besides the table."""

    json: Path | None = None
    """Write every number as JSON."""
    plot: Path | None = None
    """Write a PNG: quality vs steps per block and, below it, vs tokens per forward with each model's AUP; one line per model."""
    samples: Path | None = None
    """Write every response as JSONL."""
    grade: Path | None = None
    """Grade the responses in this JSONL file (prompt, response, answer or tests, optional model and setting) instead of decoding; with --samples, --json, --scorer."""


@dataclass(frozen=True, kw_only=True)
class EvalCommandConfig:
    """One `t3d-eval` run."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    """The models."""
    prompts: EvalPromptsConfig = field(default_factory=EvalPromptsConfig)
    """The prompts."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """The sampler settings."""
    run: ev.EvalConfig = field(default_factory=ev.EvalConfig)
    """Samples, seeds, batches and timing (the library's own EvalConfig)."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Output files."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers (TensorBoard, W&B, MLflow) beside the JSON."""

    def __post_init__(self) -> None:
        if self.output.grade is None and self.prompts.prompts is None:  # no silent toy: real checkpoints need --prompts
            for spec in self.models.model:
                require_prompts(parse_model_spec(spec)[1], None, "test")


TREE = OptionTree(EvalCommandConfig, exclude={"run.keep_samples"})


def run_config(cfg: EvalCommandConfig) -> ev.EvalReport | None:
    """The command's body on a config (t3d-run calls it too); returns the report (None with --grade)."""
    with claim("t3d-eval", *outputs(cfg.output)):  # before any model loads: a held or unwritable output is one line
        return run(cfg)


def outputs(o: OutputConfig) -> list[Output]:
    """The files this run writes, each locked on its own (the output prefix, not its directory):
    two evals may write side by side in one folder, or beside a training run, but not the same file."""
    named = (("--json", o.json), ("--plot", o.plot), ("--samples", o.samples))
    return [Output(path=Path(path), option=option, is_file=True) for option, path in named if path is not None]


def _command(cfg: EvalCommandConfig) -> None:
    run_config(cfg)


app.command(name="eval", help="Measure quality, agreement with the teacher, diversity and speed of models at few steps.")(
    TREE.command(_command, panel=lambda opt: opt.path[0].capitalize())
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
