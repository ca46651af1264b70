"""What one `t3d-run` does: a `[run]` table and one table per stage command, as option trees.

A run file holds `[run]` (the run directory, rounds, Ray address, resources per stage)
and `[collect]`, `[distill]`, `[eval]`, each exactly what that command's `--config` file
holds, parsed by the command's own option tree (t3d.dllm.options), so a key or a type
the command does not accept is refused with the file and the key named. Flags override
the file: `--distill.max-steps 100`, `--run.rounds 2`. With no file, the built-in job.

t3d-run wires the stages together, so the options that say where a stage reads or
writes (collect --out, distill --data / --out / --resume, eval --model / --json /
--plot, and every --address) are set by the run and refused in its file.

Each stage is reached through its public entry for schedulers (`t3d.pipeline.stage.COLLECT`,
`t3d.trainer.stages.DISTILL` and `EVAL`: option tree, config, run, progress), never
through its internals; no stage imports the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.options import OptionTree, as_dict
from t3d.pipeline.stage import COLLECT
from t3d.trainer.stages import DISTILL, EVAL, tracker_names

STAGES = ("collect", "distill", "eval")
WIRED = {
    "collect": {"out": "[run] out", "address": "[run] address", "overwrite": "--redo collect"},
    "distill": {"data": "the round's collect stage", "out": "[run] out", "resume": "t3d-run (it resumes by itself)",
                "address": "[run] address"},
    "eval": {"model": "the round's teacher and students", "json": "[run] out", "plot": "[run] out",
             "samples": "[run] out", "grade": "t3d-run (it evaluates its students)"},
}  # fmt: skip
DISTILL_IGNORED_CHANGES = ("train.resume", "train.progress", "dist.address", "model.force_block_size", "tracking.")
# eval options that change no number in the table: not kept in run.json, so changing them reuses a finished eval
EVAL_IGNORED = ("force_block_size", "report_to", "run_name", "project", "logging_dir")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """[run]: where the run goes, how many rounds, and what each stage gets from Ray."""

    out: str = "./runs/run"
    """Run directory: run.json, eval.png, and round-N/ (trajectories, distill, eval) per round."""
    rounds: int = 1
    """On-policy rounds: round r+1 collects with round r's student as teacher and distils from those trajectories."""
    address: str | None = None
    """Ray cluster to join (HOST:PORT or auto); default: a private local Ray, or the job's cluster under `ray job submit`."""
    distill_cpus: float | None = None
    """CPUs of the distill task (its torch threads); default: the largest node's CPUs (1 with --distill.num-workers > 1)."""
    distill_gpus: float | None = None
    """GPUs of the distill task; default: 1 when the cluster has GPUs, else 0 (Ray Train workers take their own)."""
    eval_cpus: float | None = None
    """CPUs of the eval task; default: the largest node's CPUs."""
    eval_gpus: float | None = None
    """GPUs of the eval task; default: 1 when the cluster has GPUs (then --eval.device defaults to cuda), else 0."""
    progress: bool = True
    """Show progress bars (collect's own, distill's steps)."""
    report_to: str = "none"
    """Experiment trackers of the distill and eval stages (comma list of tensorboard, wandb, mlflow, or none); a stage's own report-to wins."""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UserError(f"rounds must be at least 1, got {self.rounds}")
        tracker_names(self.report_to)  # an unknown tracker: one line naming the known ones
        for name in ("distill_cpus", "distill_gpus", "eval_cpus", "eval_gpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name} must be >= 0, got {value:g}")


RUN_TREE = OptionTree(RunConfig, metavars={"out": "PATH"})


def distill_tree() -> OptionTree:
    return DISTILL.tree


def eval_tree() -> OptionTree:
    return EVAL.tree


def trees() -> dict[str, OptionTree]:
    return {"run": RUN_TREE, "collect": COLLECT.tree, "distill": DISTILL.tree, "eval": EVAL.tree}


@dataclass(frozen=True)
class RunSpec:
    """A parsed run: [run] and each stage's option values as the user gave them (flat, checked)."""

    run: RunConfig
    sections: dict[str, dict[str, Any]]  # stage -> {option name: value} from the file and the flags
    source: str  # the config file, or "the built-in job"

    def where(self, stage: str, key: str | None = None) -> str:
        return f"{self.source} [{stage}]" + (f" {key}" if key else "")


def parse_spec(file_values: dict[str, Any], flags: dict[str, dict[str, Any]], source: str) -> RunSpec:
    """Sections from the file (checked by each command's tree), flags over them, wired keys refused."""
    unknown = [k for k in file_values if k not in ("run", *STAGES)]
    if unknown:
        raise UserError(f"unknown section [{unknown[0]}] in {source} (known: run, {', '.join(STAGES)})")
    layers: dict[str, dict[str, Any]] = {}
    for name, tree in trees().items():
        table = file_values.get(name, {})
        if not isinstance(table, dict):
            raise UserError(f"[{name}] in {source} must be a table of options, got {table!r}")
        values = tree.flatten(table, f"{source} [{name}]")
        values.update({k: v for k, v in flags.get(name, {}).items() if v is not None and v != [] and v != ()})
        layers[name] = values
    for stage, wired in WIRED.items():
        for key in layers[stage]:
            if key in wired:
                raise UserError(f"{source} [{stage}] {key}: t3d-run sets it (from {wired[key]}); remove it")
    try:
        run = RUN_TREE.build(layers.pop("run"))
    except UserError as err:
        raise UserError(f"{source} [run]: {err}") from None
    check_trackers(run, layers)
    return RunSpec(run=run, sections=layers, source=source)


def check_trackers(run: RunConfig, layers: dict[str, dict[str, Any]]) -> None:
    """Each stage's trackers ([run] report-to unless the stage names its own) import, before the first stage runs."""
    for stage in (DISTILL, EVAL):
        stage.check_trackers(layers[stage.name].get("report_to", run.report_to))


# --- each stage's config in round r ----------------------------------------------------------


@dataclass(frozen=True)
class RoundPaths:
    """Where round r reads and writes (absolute: stage tasks do not run in this directory)."""

    root: Path
    round: int

    @property
    def dir(self) -> Path:
        return self.root / f"round-{self.round}"

    @property
    def trajectories(self) -> Path:
        return self.dir / "trajectories"

    @property
    def distill(self) -> Path:
        return self.dir / "distill"

    @property
    def student(self) -> Path:
        return self.distill / "student"

    @property
    def eval(self) -> Path:
        return self.dir / "eval"


def run_root(spec: RunSpec) -> Path:
    return Path(spec.run.out).expanduser().resolve()


def teacher_model(spec: RunSpec) -> str:
    """Round 1's teacher: [collect] model (a path made absolute), default builtin."""
    return _absolute(spec.sections["collect"].get("model", "builtin"))


def model_in_round(spec: RunSpec, r: int) -> str:
    """The teacher that collects round r: round 1's teacher, then the previous round's student."""
    return teacher_model(spec) if r == 1 else str(RoundPaths(run_root(spec), r - 1).student)


def collect_config(spec: RunSpec, r: int, *, redo: bool = False) -> Any:
    values = dict(spec.sections["collect"])
    values.update(out=str(RoundPaths(run_root(spec), r).trajectories), model=model_in_round(spec, r), overwrite=redo)
    if values.get("prompts") is not None:
        values["prompts"] = _absolute(values["prompts"])
    values["address"] = None  # the run has joined Ray already; collect uses it as it is
    return _build(spec, "collect", COLLECT.tree, values)


def distill_values(spec: RunSpec, r: int) -> dict[str, Any]:
    """[distill] with the round's data, output and starting student; the preset pinned by round 1's model."""
    paths = RoundPaths(run_root(spec), r)
    values = dict(spec.sections["distill"])
    first_model = _absolute(values.get("model", teacher_model(spec)))
    values["preset"] = DISTILL.preset(first_model, values.get("preset"))  # the same recipe in every round (auto: round 1's model's size)
    values.setdefault("report_to", spec.run.report_to)
    values.setdefault("run_name", f"{paths.root.name}-round-{r}-distill")  # a tracker's run: which job, which round
    values.update(data=str(paths.trajectories), out=str(paths.distill), model=first_model if r == 1 else str(RoundPaths(paths.root, r - 1).student))
    return values


def distill_config(spec: RunSpec, r: int) -> Any:
    values = distill_values(spec, r)
    try:
        return DISTILL.config(values)
    except UserError as err:
        raise UserError(f"{spec.where('distill')}: {err}") from None


def eval_labels(r: int, loss: str = "t3d") -> list[str]:
    """Students' labels in round r's table, named for the objective they trained with: t3d (round 1), t3d-r2, ...
    (certainty, certainty-r2, ... with `[distill] loss = "certainty"`)."""
    return [loss if i == 1 else f"{loss}-r{i}" for i in range(1, r + 1)]


def eval_config(spec: RunSpec, r: int, device: str | None = None) -> Any:
    """Teacher and every student so far, on [eval]'s prompts and settings; JSON and plot in the round's eval dir."""
    root, paths = run_root(spec), RoundPaths(run_root(spec), r)
    values = dict(spec.sections["eval"])
    loss = distill_config(spec, 1).loss.kind
    students = [f"{label}={RoundPaths(root, i).student}" for i, label in enumerate(eval_labels(r, loss), 1)]
    values.update(model=(f"teacher={teacher_model(spec)}", *students), json=paths.eval / "eval.json", plot=paths.eval / "eval.png")
    for key in ("prompts", "like"):
        if values.get(key) is not None:
            values[key] = Path(_absolute(str(values[key])))
    if device is not None and "device" not in spec.sections["eval"]:
        values["device"] = device
    values.setdefault("report_to", spec.run.report_to)
    values.setdefault("run_name", f"{root.name}-round-{r}-eval")
    return _build(spec, "eval", EVAL.tree, values)


def _build(spec: RunSpec, stage: str, tree: OptionTree, values: dict[str, Any]) -> Any:
    try:
        return tree.build(values)
    except UserError as err:
        raise UserError(f"{spec.where(stage)}: {err}") from None


def _absolute(path: str) -> str:
    return path if path == "builtin" or path.startswith("builtin:") else str(Path(path).expanduser().resolve())


def distill_changes(old: Any, new: Any) -> list[str]:
    """What differs between a finished distill's checkpoint config and this run's, ignoring how it runs."""
    return [c for c in DISTILL.changes(old, new) if not c.startswith(DISTILL_IGNORED_CHANGES)]


def eval_record(cfg: Any) -> dict[str, Any]:
    """An eval config as JSON-ready flat values (what run.json keeps and compares)."""
    values = {k: v for k, v in EVAL.values(cfg).items() if k not in EVAL_IGNORED}
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in values.items()}


def section_flags(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Typer's `stage__name` parameters -> {stage: {name: value}}."""
    out: dict[str, dict[str, Any]] = {name: {} for name in ("run", *STAGES)}
    for key, value in values.items():
        stage, _, name = key.partition("__")
        out[stage][name] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A stage's config as run.json keeps it: one table per section, as its config file writes it."""
    return as_dict(cfg)
