"""`t3d-run [CONFIG]`: the whole job as stages scheduled on Ray, resumable stage by stage.

    t3d-run                                   # the built-in job
    t3d-run job.toml --distill.max-steps 100  # [run] [collect] [distill] [eval] tables, flags over them
    ray job submit -- t3d-run job.toml        # the same on a cluster

Each round runs collect -> distill -> eval; with `rounds = N` the round's student is the
next round's teacher (on-policy). Stages run on Ray with their own resources: collect's
actor pool (driven from this process, as t3d-collect does), distill in a Ray task (one
process, or the driver of Ray Train workers with --distill.num-workers > 1), eval in a
Ray task with a GPU where the cluster has one. Their logs go to the round's directory;
this process shows the progress.

Resuming is decided from each stage's own outputs, not from a flag file: collect is done
when its dataset manifest lists every shard with this run's dataset key (an interrupted
collect resumes its shards); distill is done when its latest checkpoint reached
--max-steps and the student is exported, and resumes from that checkpoint otherwise;
eval is done when its JSON exists for the options recorded in run.json. A finished stage
whose options changed is refused unless `--redo STAGE`, which reruns it and everything
after it. run.json records every stage's config, timings, outputs and tables. A job that
finished with the same options is recognised from these files before Ray starts, so
asking it again answers in seconds.

The scheduler is a room of its own: it uses each stage through the entry the stage offers
schedulers (`t3d.pipeline.stage.COLLECT`, `t3d.trainer.stages.DISTILL` and `EVAL`: option
tree, config, `run`, what its outputs say), and no stage imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from t3d.dllm.cli import flag_value, load_config_file, register_user_error, run_cli
from t3d.dllm.errors import UserError
from t3d.dllm.options import with_signature
from t3d.dllm.outdir import Output, claim
from t3d.pipeline.stage import COLLECT
from t3d.scheduler import run_config as rc
from t3d.scheduler.run_config import STAGES, RoundPaths, RunSpec
from t3d.storage_schemas import DatasetError, Manifest
from t3d.trainer.stages import DISTILL, EVAL

RUN_JSON = "run.json"
RUN_JSON_VERSION = 1
POLL_SECONDS = 1.0


# --- the run manifest --------------------------------------------------------------------------


class RunManifest:
    """run.json: the spec, and per round and stage its status, config, timings and outputs (atomic writes)."""

    def __init__(self, root: Path, spec: RunSpec, command: list[str]) -> None:
        self.path = root / RUN_JSON
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "version": RUN_JSON_VERSION, "command": command, "source": spec.source, "run": rc.to_dict(spec.run),
            "sections": spec.sections, "rounds": old.get("rounds", []), "finished": False,
        }  # fmt: skip

    def stage(self, r: int, stage: str) -> dict[str, Any]:
        while len(self.data["rounds"]) < r:
            self.data["rounds"].append({"round": len(self.data["rounds"]) + 1, "stages": {}})
        return self.data["rounds"][r - 1]["stages"].setdefault(stage, {})

    def forget_from(self, r: int, stage: str) -> None:
        """Drop the records of (r, stage) and everything after it."""
        rounds = self.data["rounds"]
        del rounds[r:]
        if len(rounds) >= r:
            stages = rounds[r - 1]["stages"]
            for later in STAGES[STAGES.index(stage):]:
                stages.pop(later, None)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{RUN_JSON}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


# --- checks before anything is written ---------------------------------------------------------


def preflight(spec: RunSpec) -> Any:
    """Build round 1's configs and read its inputs (prompts, teacher): every error here leaves no file."""
    cfg = rc.collect_config(spec, 1)
    rc.distill_config(spec, 1)
    eval_cfg = rc.eval_config(spec, 1)
    try:
        plan = COLLECT.plan(cfg)
    except (UserError, FileNotFoundError) as err:
        raise UserError(f"{spec.where('collect')}: {err}") from None
    for key, path in (("prompts", eval_cfg.prompts.prompts), ("like", eval_cfg.prompts.like)):
        if path is not None and not str(path).startswith("builtin") and not Path(path).exists():  # builtin:SPLIT names the task
            raise UserError(f"{spec.where('eval', key)}: not found: {path}")
    model = spec.sections["distill"].get("model")
    if model not in (None, "builtin") and not Path(model).is_dir():
        raise UserError(f"{spec.where('distill', 'model')}: model directory not found: {model}")
    return plan


def stage_resources(spec: RunSpec) -> dict[str, dict[str, float]]:
    """CPUs and GPUs of the distill and eval tasks, defaults filled from the cluster; refused when no node has them."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    biggest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
    gpu_default = 1.0 if biggest["GPU"] > 0 else 0.0
    many = int(spec.sections["distill"].get("num_workers", 1)) > 1
    run = spec.run
    wanted = {
        "distill": {"CPU": run.distill_cpus if run.distill_cpus is not None else (1.0 if many else biggest["CPU"]),
                    "GPU": run.distill_gpus if run.distill_gpus is not None else (0.0 if many else gpu_default)},
        "eval": {"CPU": run.eval_cpus if run.eval_cpus is not None else biggest["CPU"],
                 "GPU": run.eval_gpus if run.eval_gpus is not None else gpu_default},
    }  # fmt: skip
    collect = rc.collect_config(spec, 1).cluster
    wanted_collect = {"CPU": collect.cpus_per_worker, "GPU": collect.gpus_per_worker or 0.0}
    for stage, want, keys in (("distill", wanted["distill"], ("distill_cpus", "distill_gpus")),
                              ("eval", wanted["eval"], ("eval_cpus", "eval_gpus")),
                              ("collect", wanted_collect, ("cpus_per_worker", "gpus_per_worker"))):  # fmt: skip
        if not any(all(n.get(k, 0.0) >= v for k, v in want.items() if v > 0) for n in nodes):
            section = "run" if stage != "collect" else "collect"
            key = keys[0] if want["CPU"] > biggest["CPU"] else keys[1]
            raise UserError(
                f"{spec.where(section, key)}: no node of the Ray cluster has {want['CPU']:g} CPU and {want['GPU']:g} GPU "
                f"for the {stage} stage (largest: {biggest['CPU']:g} CPU, {biggest['GPU']:g} GPU)"
            )
    return wanted


# --- stage: collect (its actor pool, driven from here) ----------------------------------------


def collect_state(spec: RunSpec, r: int) -> tuple[str, Any, str | None]:
    """(done | resume | fresh, plan, why it cannot be reused) for round r's collect, from the dataset's own manifest."""
    plan = COLLECT.plan(rc.collect_config(spec, r))
    status, problem = COLLECT.state(plan)
    return status, plan, problem


def run_collect(plan: Any) -> None:
    COLLECT.run(plan)


def collect_outputs(plan: Any) -> dict[str, Any]:
    manifest = Manifest.load(plan.cfg.out)
    return {"dataset": plan.cfg.out, "shards": len(manifest.shards), "rows": sum(s.rows for s in manifest.shards.values()),
            "teacher": manifest.teacher.get("name"), "teacher_fingerprint": manifest.teacher.get("fingerprint")}  # fmt: skip


# --- stage: distill (a Ray task) ---------------------------------------------------------------


def distill_state(spec: RunSpec, r: int) -> tuple[str, Any, str | None]:
    """(done | resume | fresh, config, why refused), from the checkpoints and the exported student."""
    cfg = rc.distill_config(spec, r)
    progress = DISTILL.progress(cfg)
    if progress is None:
        return "fresh", cfg, None
    step, saved, exported = progress
    changes = rc.distill_changes(saved, cfg)
    done = step >= cfg.train.max_steps and exported
    if changes:
        return ("done" if done else "resume"), cfg, "; ".join(changes)
    return ("done" if done else "resume"), cfg, None


def run_distill(cfg: Any, resume: bool, resources: dict[str, float], progress: bool) -> None:
    import dataclasses

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=resume, progress=False))
    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out.parent / "distill.log"
    task = _remote(DISTILL.task, resources).remote(DISTILL.record(cfg), str(log), int(resources["CPU"]))
    _wait(task, log, "distill", progress, total=cfg.train.max_steps, metrics=out / "metrics.jsonl")


def distill_outputs(cfg: Any) -> dict[str, Any]:
    out = Path(cfg.train.out)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    return {"student": str(out / "student"), "step": last.get("step"), "log": str(out.parent / "distill.log"),
            "last_step": {k: round(last[k], 5) for k in DISTILL.loss_parts(cfg) if k in last}}  # fmt: skip


# --- stage: eval (a Ray task) ------------------------------------------------------------------


def eval_state(spec: RunSpec, r: int, manifest: RunManifest, device: str | None) -> tuple[str, Any, str | None]:
    """(done | fresh, config, why it cannot be reused): done when its JSON exists for the options run.json recorded."""
    cfg = rc.eval_config(spec, r, device)
    record = manifest.stage(r, "eval")
    if not (Path(cfg.output.json).is_file() and record.get("status") == "done"):
        return "fresh", cfg, None
    old, new = record.get("config", {}), json.loads(json.dumps(rc.eval_record(cfg)))
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    return "done", cfg, "; ".join(changed) or None


def run_eval(cfg: Any, resources: dict[str, float], record: dict[str, Any], progress: bool) -> None:
    out = Path(cfg.output.json).parent
    out.mkdir(parents=True, exist_ok=True)
    log = out / "eval.log"
    task = _remote(EVAL.task, resources).remote(EVAL.values(cfg), str(log), int(resources["CPU"]))
    result = _wait(task, log, "eval", progress)
    record["outputs"] = {"json": str(cfg.output.json), "plot": str(cfg.output.plot), "log": str(log)}
    record["table"] = result["table"]
    record["legend"] = result["legend"]


# --- running tasks and showing progress --------------------------------------------------------


def _remote(function: Any, resources: dict[str, float]) -> Any:
    import ray

    return ray.remote(function).options(num_cpus=resources["CPU"], num_gpus=resources["GPU"], max_retries=0)


def _wait(task: Any, log: Path, stage: str, progress: bool, total: int | None = None, metrics: Path | None = None) -> Any:
    """Wait for a stage task, echoing its log and (for distill) a bar over metrics.jsonl; task errors as one line."""
    import ray
    from tqdm import tqdm

    done_steps = _count_lines(metrics) if metrics else 0
    bar = tqdm(total=total, initial=done_steps, desc=stage, unit="step", disable=not progress or total is None, dynamic_ncols=True)
    seen = 0
    try:
        while True:
            ready, _ = ray.wait([task], timeout=POLL_SECONDS)
            seen = _echo(log, seen, stage, bar)
            if metrics is not None:
                bar.update(max(0, _count_lines(metrics) - bar.n))
            if ready:
                return _result(task, stage)
    finally:
        bar.close()


def _result(task: Any, stage: str) -> Any:
    import ray

    try:
        return ray.get(task)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, (UserError, DatasetError, FileNotFoundError, NotADirectoryError)):
            raise UserError(f"{stage}: {str(cause).strip().splitlines()[0]}") from None
        raise


def _echo(log: Path, seen: int, stage: str, bar: Any) -> int:
    if not log.is_file():
        return seen
    with open(log) as fh:
        fh.seek(seen)
        text = fh.read()
    complete = text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        if line.strip():
            bar.write(f"{stage:<8}| {line}", file=sys.stdout)
    return seen + len(complete.encode())


def _count_lines(path: Path | None) -> int:
    if path is None or not path.is_file():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


# --- the run ----------------------------------------------------------------------------------


def refuse(spec: RunSpec, stage: str, r: int, why: str) -> None:
    raise UserError(f"{spec.where(stage)} changed since round {r}'s {stage} ran ({why}): pass --redo {stage} to rerun it")


def remove_outputs(root: Path, spec: RunSpec, redo: str) -> None:
    """--redo STAGE: delete round 1's STAGE outputs and everything after them (later rounds too)."""
    first = RoundPaths(root, 1)
    per_stage = {"collect": [first.trajectories], "distill": [first.distill, first.dir / "distill.log"], "eval": [first.eval]}
    for stage in STAGES[STAGES.index(redo):]:
        for path in per_stage[stage]:
            _remove(path)
    for r in range(2, max(spec.run.rounds, _rounds_on_disk(root)) + 1):
        _remove(RoundPaths(root, r).dir)


def _rounds_on_disk(root: Path) -> int:
    return max((int(p.name.split("-")[1]) for p in root.glob("round-*") if p.name.split("-")[1].isdigit()), default=0)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def execute(spec: RunSpec, redo: str | None, command: list[str]) -> dict[str, Any]:
    """Check, join Ray, run every round's stages that are not done; returns run.json's content."""
    from t3d.pipeline.cluster import ray_connection

    with claim("t3d-run", Output(path=rc.run_root(spec), option="--run.out")):  # its stages lock their own subdirectories
        preflight(spec)
        tic = time.perf_counter()
        done = finished_already(spec, redo, command)
        if done is not None:
            report_finished(spec, done, time.perf_counter() - tic)
            return done
        address = spec.run.address or os.environ.get("RAY_ADDRESS")
        root = rc.run_root(spec)
        with ray_connection(address):
            resources = stage_resources(spec)
            manifest = RunManifest(root, spec, command)
            refusal = first_refusal(spec, redo, manifest, resources)
            if refusal is not None:
                refuse(spec, *refusal)
            if redo is not None:
                remove_outputs(root, spec, redo)
                manifest.forget_from(1, redo)
            manifest.save()
            start = time.perf_counter()
            for r in range(1, spec.run.rounds + 1):
                run_round(spec, r, resources, manifest)
            manifest.data["rounds"] = manifest.data["rounds"][: spec.run.rounds]
            finish(spec, manifest, time.perf_counter() - start)
        return manifest.data


def finished_already(spec: RunSpec, redo: str | None, command: list[str]) -> dict[str, Any] | None:
    """run.json's content when the job finished with these options: every stage of every round done, none changed.

    Decided from the files alone (run.json, each dataset manifest, checkpoint and eval
    JSON), before Ray starts: asking a finished job whether it is finished costs seconds,
    not a Ray start-up. The eval device is the one run.json recorded (it came from the
    cluster's GPUs). Anything else (not finished, a stage to redo, a changed option) goes
    the long way, which runs or refuses it.
    """
    path = rc.run_root(spec) / RUN_JSON
    if redo is not None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not data.get("finished") or len(data.get("rounds", [])) != spec.run.rounds:
        return None
    manifest = RunManifest(rc.run_root(spec), spec, command)
    for r in range(1, spec.run.rounds + 1):
        device = manifest.stage(r, "eval").get("config", {}).get("device")
        states = (collect_state(spec, r), distill_state(spec, r), eval_state(spec, r, manifest, device))
        if any(status != "done" or why for status, _, why in states):
            return None
    return data


def report_finished(spec: RunSpec, data: dict[str, Any], seconds: float) -> None:
    """What a finished run prints: each stage skipped, the last table (every round's with rounds > 1), where things are."""
    root = rc.run_root(spec)
    for r, rnd in enumerate(data["rounds"], 1):
        for stage in STAGES:
            print(f"[round {r}/{spec.run.rounds}] {stage}: done already ({_where(rnd['stages'][stage])}), skipped")
    tables = [(r, rnd["stages"]["eval"].get("table", "")) for r, rnd in enumerate(data["rounds"], 1)]
    for r, table in tables[-1:] if spec.run.rounds == 1 else tables:
        print(f"\neval, round {r}:\n{table}")
    print_legend(data["rounds"][-1]["stages"]["eval"])
    print(f"\nrun       {root / RUN_JSON}, plot {data.get('plot', root / 'eval.png')} "
          f"(finished already: nothing to run, checked in {seconds:.1f} s without starting Ray)")  # fmt: skip


def eval_device(resources: dict[str, dict[str, float]]) -> str | None:
    return "cuda" if resources["eval"]["GPU"] > 0 else None


def first_refusal(spec: RunSpec, redo: str | None, manifest: RunManifest, resources: dict) -> tuple[str, int, str] | None:
    """A stage of round 1 that ran with other options, unless --redo covers it: refused before anything runs."""
    checks = {"collect": lambda: collect_state(spec, 1), "distill": lambda: distill_state(spec, 1),
              "eval": lambda: eval_state(spec, 1, manifest, eval_device(resources))}  # fmt: skip
    for stage in STAGES[: STAGES.index(redo) if redo else len(STAGES)]:
        why = checks[stage]()[2]
        if why:
            return stage, 1, why
    return None


def run_round(spec: RunSpec, r: int, resources: dict[str, dict[str, float]], manifest: RunManifest) -> None:
    """collect -> distill -> eval of round r; each skipped when its own outputs say it is done."""

    def say(text: str) -> None:
        print(f"[round {r}/{spec.run.rounds}] {text}", flush=True)

    status, plan, why = collect_state(spec, r)
    if why:
        refuse(spec, "collect", r, why)
    config = {"config": rc.to_dict(plan.cfg), "dataset_key": plan.manifest_config()["dataset_key"]}
    _run_stage(say, "collect", status, manifest, r, config, lambda: run_collect(plan), lambda: collect_outputs(plan))

    status, cfg, why = distill_state(spec, r)
    if why:
        refuse(spec, "distill", r, why)
    body = lambda: run_distill(cfg, status == "resume", resources["distill"], spec.run.progress)  # noqa: E731
    _run_stage(say, "distill", status, manifest, r, {"config": DISTILL.record(cfg)}, body, lambda: distill_outputs(cfg))

    status, eval_cfg, why = eval_state(spec, r, manifest, eval_device(resources))
    if why:
        refuse(spec, "eval", r, why)
    record = manifest.stage(r, "eval")
    if status != "done":
        _remove(Path(eval_cfg.output.json).parent)
    body = lambda: run_eval(eval_cfg, resources["eval"], record, spec.run.progress)  # noqa: E731
    _run_stage(say, "eval", status, manifest, r, {"config": rc.eval_record(eval_cfg)}, body, lambda: record.get("outputs", {}))


def _run_stage(say: Any, stage: str, status: str, manifest: RunManifest, r: int, config: dict, body: Any, outputs: Any) -> None:
    """Skip a done stage (recording it if an interrupted run had not), else run it and record config, time, outputs."""
    record = manifest.stage(r, stage)
    if status == "done":
        fresh = record.get("status") != "done"
        record.update(config, status="done", outputs=outputs())
        manifest.save()
        say(f"{stage}: done already ({_where(record)}), skipped" + (" (recorded now)" if fresh else ""))
        return
    say(f"{stage}: {'resuming' if status == 'resume' else 'starting'}")
    record.clear()
    record.update(config, status="running", resumed=status == "resume", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    manifest.save()
    tic = time.perf_counter()
    body()
    record.update(status="done", seconds=round(time.perf_counter() - tic, 2), outputs=outputs())
    manifest.save()
    say(f"{stage}: done in {record['seconds']:.1f} s")


def _where(record: dict) -> str:
    outputs = record.get("outputs", {})
    return str(outputs.get("dataset") or outputs.get("student") or outputs.get("json") or "")


def finish(spec: RunSpec, manifest: RunManifest, seconds: float) -> None:
    """The last round's table and plot at the top of the run directory; run.json marked finished."""
    root = rc.run_root(spec)
    last = manifest.data["rounds"][-1]["stages"]["eval"]
    plot = Path(last["outputs"]["plot"])
    if plot.is_file():
        shutil.copyfile(plot, root / "eval.png")
    tables = [(i + 1, rnd["stages"]["eval"].get("table", "")) for i, rnd in enumerate(manifest.data["rounds"])]
    manifest.data.update(finished=True, table=last.get("table", ""), plot=str(root / "eval.png"), seconds=round(seconds, 2))
    manifest.save()
    for r, table in tables[-1:] if spec.run.rounds == 1 else tables:
        print(f"\neval, round {r}:\n{table}")
    print_legend(last)
    print(f"\nrun       {root / RUN_JSON}, plot {root / 'eval.png'} ({seconds:.1f} s this time)")


def print_legend(eval_record: dict[str, Any]) -> None:
    """The table's legend under the last table (runs recorded before it existed have none)."""
    if eval_record.get("legend"):
        print("\n" + eval_record["legend"])


# --- CLI ---------------------------------------------------------------------------------------


def distill_help_defaults(argv: list[str]) -> tuple[dict[str, str], str | None]:
    """For `--help`: the distill table's defaults as the preset in force sets them (t3d-distill's rule: its
    --preset, else the one for its model), from --distill.preset / --distill.model / --collect.model and the
    CONFIG file's tables; ({}, None) when --help is not asked for."""
    if "--help" not in argv:
        return {}, None
    from t3d.trainer.stages import distill_shown_defaults

    config = next((a for a in argv if not a.startswith("-") and Path(a).suffix in (".toml", ".yaml", ".yml")), None)
    try:
        tables = load_config_file(config)
    except (UserError, ValueError):  # the run will say what is wrong with the file
        tables = {}
    distill, collect = tables.get("distill") or {}, tables.get("collect") or {}
    model = (flag_value(argv, "--distill.model") or flag_value(argv, "--collect.model") or distill.get("model")
             or collect.get("model") or "builtin")  # fmt: skip
    preset = flag_value(argv, "--distill.preset") or distill.get("preset")
    return distill_shown_defaults(str(model), str(preset) if preset else None)


def build_app(argv: list[str] | None = None):
    """The typer app of `t3d-run` (tests invoke it in-process); `argv` (default: this process's arguments)
    decides what `--help` shows as the distill table's defaults."""
    import inspect

    import typer

    shown, epilog = distill_help_defaults(sys.argv[1:] if argv is None else argv)

    register_user_error(DatasetError)
    params = [
        inspect.Parameter("config_file", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[str],
                          default=typer.Argument(None, metavar="[CONFIG]", help="TOML or YAML file with run, collect, distill and eval tables; default: the built-in job.")),
        inspect.Parameter("redo", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, "--redo", metavar="STAGE", help="Rerun STAGE (collect, distill or eval) of round 1 and everything after it, even though it finished.")),
    ]  # fmt: skip
    for name, tree in rc.trees().items():
        skip = rc.WIRED.get(name, {})  # set by the run: not options of t3d-run
        params += tree.parameters(prefix=f"{name}.", panel=lambda opt, name=name: f"{name} table", skip=skip,
                                  shown=shown if name == "distill" else None)

    def command(config_file: str | None, redo: str | None, **values: Any) -> None:
        def body() -> None:
            if redo is not None and redo not in STAGES:
                raise UserError(f"--redo must be one of {', '.join(STAGES)}, got {redo!r}")
            file_values = load_config_file(config_file)
            spec = rc.parse_spec(file_values, rc.section_flags(values), str(config_file) if config_file else "the built-in job")
            execute(spec, redo, ["t3d-run", *sys.argv[1:]])

        run_cli(body)

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=__doc__.split("\n\n")[0], epilog=epilog)(with_signature(command, params))
    return app


def main() -> None:
    """Entry point of `t3d-run`."""
    build_app()()


if __name__ == "__main__":
    main()
