"""`t3d-collect`: roll out a teacher on Ray actors into a trajectory dataset.

    t3d-collect --prompts prompts.jsonl --model /ckpt/teacher --out runs/traj --num-workers 4

The command parses options into a `CollectConfig`, then `collect` plans the run (all
input checks happen here, before Ray starts or a file is written), opens or resumes the
output directory, runs the units that have no shard yet on an actor pool, and reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3d.dllm.cli import register_user_error
from t3d.dllm.cli import check_ray_address
from t3d.dllm.block_checks import check_decode_block, check_steps_per_block
from t3d.dllm.outdir import Output, claim
from t3d.pipeline.cluster import gpus_per_worker, ray_connection, resource_warning
from t3d.pipeline.config import CollectConfig, cli_command, to_dict
from t3d.pipeline.output import SKIPPED_TOO_LONG, OutputState, discard_if_unstarted, open_output
from t3d.dllm.prompt_encoding import applies_chat_template
from t3d.pipeline.prompts import PreparedPrompts, load_prompt_source, prepare_prompts, row_scorer
from t3d.pipeline.rollout import RolloutJob, UnitResult
from t3d.pipeline.teacher import TeacherInfo, describe_teacher
from t3d.pipeline.units import UnitFailedError, WorkUnit, plan_units
from t3d.storage_schemas import DatasetError, Manifest

TOPK_BYTES_PER_TOKEN = 2 + 4  # float16 log-prob + int32 id, per k, before compression


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before Ray starts: prompts, teacher, units, the dataset key."""

    cfg: CollectConfig
    teacher: TeacherInfo
    prompts: PreparedPrompts
    units: list[WorkUnit]
    score: Any  # fills `correct`: the built-in task's validity check, a RowScorer, or None
    scorer: str | None = None  # the registry name behind `score` (what `--scorer auto` resolved to; auto: per record)
    notes: tuple[str, ...] = ()  # the prompts' layout and how they are graded, printed at the start
    grading: dict[str, Any] | None = None  # records per scorer and those nothing grades (`Grading.summary()`), in the manifest

    def manifest_config(self) -> dict[str, Any]:
        key = self.cfg.dataset_key() | {"prompts_digest": self.prompts.digest()}
        encoding = self.cfg.prompts.encoding
        return {"config": to_dict(self.cfg), "dataset_key": key, "prompts": self.prompt_counts(), "units": len(self.units),
                "scorer": self.scorer, "grading": self.grading, "prompt_encoding": encoding.to_dict(),
                "chat_template_applied": applies_chat_template(self.teacher.tokenizer, encoding)}  # fmt: skip

    def prompt_counts(self) -> dict[str, int]:
        return {"read": self.prompts.total, "kept": len(self.prompts.prompts), "skipped": len(self.prompts.skipped)}


@dataclass
class CollectSummary:
    """What a run did (the CLI prints it; tests and the benchmark read it)."""

    out: str
    units_total: int
    units_run: int = 0
    rows: int = 0
    response_tokens: int = 0
    prompts: int = 0
    seconds: float = 0.0
    sample_seconds: float = 0.0  # inside the sampler, summed over actors
    unit_seconds: float = 0.0  # whole units (sampling + building and committing shards), summed over actors
    ray_start_seconds: float = 0.0
    worker_start_seconds: float = 0.0  # until the first actor had loaded the teacher
    retries: int = 0
    actors_lost: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    resumed: bool = False


def plan_run(cfg: CollectConfig) -> RunPlan:
    """Read and check the prompts and the teacher; cut the work into units. No side effects."""
    teacher = describe_teacher(cfg.teacher)
    sampler = cfg.rollout.sampler
    check_decode_block(cfg.teacher.model, sampler.block_size, family=cfg.teacher.load.family, force=cfg.teacher.force_block_size)
    check_steps_per_block(sampler.block_size, [sampler.steps_per_block], sampler.strategy)
    p = cfg.prompts
    source = load_prompt_source(p.prompts, p.scorer, fields=p.fields(), limit=p.limit, task_seed=teacher.task_seed)
    records, builtin = source.records, source.builtin
    prepared = prepare_prompts(
        records,
        teacher.tokenizer,
        encoding=cfg.prompts.encoding,
        max_prompt_tokens=teacher.max_length - sampler.max_new_tokens,
        on_long_prompt=cfg.prompts.on_long_prompt,
        limit=cfg.prompts.limit,
        vocab_size=teacher.identity["vocab_size"],
    )
    builtin_score = _builtin_score(teacher.task_seed) if builtin else None
    score = row_scorer(source.grading, records, prepared, teacher.tokenizer, builtin_score, cfg.cluster.code_workers)
    units = plan_units(prepared.prompts, cfg.shard_size)
    return RunPlan(cfg, teacher, prepared, units, score, source.grading.name, source.notes, source.grading.summary())


def _builtin_score(task_seed: int) -> Any:
    """The built-in task's validity check, which fills the `correct` column."""
    from t3d.dllm.task import BuiltinTask

    return BuiltinTask(seed=task_seed).is_valid


def collect(cfg: CollectConfig) -> CollectSummary:
    """Lock --out (one writer per dataset), then plan, open it, run the missing units on Ray, report."""
    with claim("t3d-collect", Output(path=Path(cfg.out), option="--out")):
        return _collect(cfg)


def _collect(cfg: CollectConfig) -> CollectSummary:
    plan = plan_run(cfg)
    check_ray_address(cfg.cluster.address)  # ray_connection checks too, but only after the output is opened
    state = open_output(
        cfg.out,
        collect_config=plan.manifest_config(),
        teacher=plan.teacher.identity,
        skipped={SKIPPED_TOO_LONG: len(plan.prompts.skipped)} if plan.prompts.skipped else {},
        overwrite=cfg.overwrite,
    )
    pending = [u for u in plan.units if u.name not in state.manifest.shards]
    report_plan(plan, state, pending)
    summary = CollectSummary(out=cfg.out, units_total=len(plan.units), resumed=state.resumed)
    if pending:
        with discard_if_unstarted(cfg.out, state):  # a teacher that fails to load leaves no empty dataset
            run_pending(plan, state, pending, summary)
    report_summary(summary)
    return summary


def run_pending(plan: RunPlan, state: OutputState, pending: list[WorkUnit], summary: CollectSummary) -> None:
    """Start (or join) Ray, run `pending` on the actor pool, record each shard as it lands."""
    cfg = plan.cfg
    start = time.perf_counter()
    with ray_connection(cfg.cluster.address) as ray_seconds, progress_bar(cfg, pending) as bar:
        from t3d.pipeline.pool import ActorPool  # imports Ray: only after ray_connection set up auth

        summary.ray_start_seconds = ray_seconds
        num_gpus = gpus_per_worker(cfg.cluster)
        warning = resource_warning(cfg.cluster, num_gpus)
        if warning:
            bar.write(f"warning   {warning}", file=sys.stdout)
        recorder = Recorder(cfg.out, state.manifest, summary, bar)
        pool = ActorPool(build_job(plan), cfg.cluster, num_gpus=num_gpus)
        try:
            stats = pool.run(pending, recorder.done, recorder.ready)
        finally:
            pool.shutdown()
    summary.seconds = time.perf_counter() - start - summary.ray_start_seconds
    summary.retries, summary.actors_lost = stats.retries, stats.actors_lost
    summary.worker_start_seconds = stats.first_ready_seconds or 0.0


def build_job(plan: RunPlan) -> RolloutJob:
    """What every actor gets; paths made absolute, since actors may run in another directory."""
    teacher = plan.cfg.teacher
    if teacher.model != "builtin":
        teacher = dataclasses.replace(teacher, model=plan.teacher.identity["path"])
    return RolloutJob(
        out_dir=str(Path(plan.cfg.out).resolve()),
        teacher=teacher,
        teacher_identity=plan.teacher.identity,
        rollout=plan.cfg.rollout,
        seed=plan.cfg.seed,
        torch_threads=max(1, int(plan.cfg.cluster.cpus_per_worker)),
        score=plan.score,
    )


class Recorder:
    """Driver side of each finished unit: list it in the manifest (the only writer), count it, show it."""

    def __init__(self, out: str, manifest: Manifest, summary: CollectSummary, bar: Any) -> None:
        self.out, self.manifest, self.summary, self.bar = out, manifest, summary, bar
        self.start = time.perf_counter()

    def done(self, unit: WorkUnit, result: UnitResult) -> None:
        self.manifest = self.manifest.with_shard(result.shard)
        self.manifest.save(self.out)  # atomic; a crash after the shard's commit is repaired by reconcile
        s = self.summary
        s.units_run += 1
        s.rows += result.rows
        s.prompts += result.prompts
        s.response_tokens += result.response_tokens
        s.sample_seconds += result.sample_seconds
        s.unit_seconds += result.total_seconds
        for reason, count in result.finish_reasons.items():
            s.finish_reasons[reason] = s.finish_reasons.get(reason, 0) + count
        self.bar.update(result.prompts)
        self.bar.set_postfix_str(f"{s.response_tokens / max(time.perf_counter() - self.start, 1e-9):,.0f} tok/s")

    def ready(self, info: dict[str, Any]) -> None:
        self.bar.write(
            f"worker    {info['worker']} ready on node {info['node'][:12]} ({info['device']}, pid {info['pid']}, "
            f"teacher loaded in {info['load_seconds']:.1f} s)",
            file=sys.stdout,
        )


# --- reporting -------------------------------------------------------------------------


def report_plan(plan: RunPlan, state: OutputState, pending: list[WorkUnit]) -> None:
    """The derived sizes of the run, printed once at the start."""
    cfg, sampler, counts = plan.cfg, plan.cfg.rollout.sampler, plan.prompt_counts()
    rows = counts["kept"] * cfg.rollout.rollouts_per_prompt
    who = plan.teacher.identity
    print(f"teacher   {who['name']} ({who['family']}, fingerprint {who['fingerprint']})")
    print(f"prompts   {counts['read']} read, {counts['kept']} kept", end="")
    if counts["skipped"]:
        print(f", {counts['skipped']} skipped: longer than {plan.teacher.max_length - sampler.max_new_tokens} tokens (counted in the manifest)", end="")
    print()
    for note in plan.notes:
        print(note)
    print(f"rollouts  {counts['kept']} prompts x {cfg.rollout.rollouts_per_prompt} = {rows} rows, "
          f"at most {rows * sampler.max_new_tokens:,} response tokens ({sampler.max_new_tokens} per row)")
    topk = f"top-{sampler.logits_top_k} logits ({sampler.logits_top_k * TOPK_BYTES_PER_TOKEN} B/token raw)" if sampler.logits_top_k else "no top-k logits"
    print(f"stored    {topk}, states: {cfg.rollout.record_states}")
    done = len(plan.units) - len(pending)
    print(f"units     {len(plan.units)} shards of up to {cfg.shard_size} prompts: {done} done, {len(pending)} to run")
    where = f"Ray at {cfg.cluster.address}" if cfg.cluster.address else "a private local Ray"
    print(f"workers   {cfg.cluster.num_workers} x ({cfg.cluster.cpus_per_worker:g} CPU, "
          f"{'auto' if cfg.cluster.gpus_per_worker is None else f'{cfg.cluster.gpus_per_worker:g}'} GPU) on {where}")
    if state.reconcile_note:
        print(f"resume    {state.reconcile_note}")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(cfg: CollectConfig, pending: list[WorkUnit]):
    from tqdm import tqdm

    total = sum(len(u.prompts) for u in pending)
    with tqdm(total=total, unit="prompt", desc="collect", disable=not cfg.cluster.progress, dynamic_ncols=True) as bar:
        yield bar


def report_summary(s: CollectSummary) -> None:
    if s.units_run == 0:
        print(f"nothing to do: all {s.units_total} shards of {s.out} are committed")
        return
    rate = s.seconds if s.seconds > 0 else float("nan")
    print(f"done      {s.units_run} shards, {s.rows} rows, {s.response_tokens:,} response tokens in {s.seconds:.1f} s "
          f"({s.prompts / rate:,.1f} prompts/s, {s.response_tokens / rate:,.0f} tokens/s)")
    print(f"startup   Ray {s.ray_start_seconds:.1f} s, first worker ready (teacher loaded) after {s.worker_start_seconds:.1f} s")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.finish_reasons.items()))
    print(f"finish    {reasons}; retries {s.retries}, workers lost {s.actors_lost}")
    print(f"dataset   {s.out} ({s.units_total} shards; t3d-inspect {s.out})")


# --- CLI -------------------------------------------------------------------------------


def build_app():
    """The typer app of `t3d-collect` (tests invoke it in-process)."""
    import typer

    register_user_error(DatasetError)
    register_user_error(UnitFailedError)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=__doc__.split("\n\n")[0])(cli_command(collect))
    return app


def main() -> None:
    """Entry point of `t3d-collect`."""
    build_app()()


if __name__ == "__main__":
    main()
