"""`t3d-collect` as a stage a scheduler runs (t3d-run): its options, its plan and `collect`, and what its output says.

The public entry of stage 1 for a scheduler, beside the command's own (`collect.main`):
a scheduler builds `CollectConfig` with `tree`, runs `run(plan)`, and asks `state(plan)`
whether the dataset there is finished, resumable, or made with other options, and never
reaches into the collect modules itself.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from t3d.dllm.options import OptionTree
from t3d.storage_schemas import Manifest


class CollectStage:
    """`CollectConfig` (through `tree`), its plan (the teacher read without its weights, the work units) and `collect`."""

    name = "collect"

    @cached_property
    def tree(self) -> OptionTree:
        from t3d.pipeline.config import TREE

        return TREE

    def plan(self, cfg: Any) -> Any:
        from t3d.pipeline.collect import plan_run

        return plan_run(cfg)

    def state(self, plan: Any) -> tuple[str, str | None]:
        """(done | resume | fresh, why the dataset there cannot be reused), from the dataset's own manifest."""
        from t3d.pipeline.output import first_difference

        out = Path(plan.cfg.out)
        if not (out / "manifest.json").is_file():
            return "fresh", None
        manifest = Manifest.load(out)
        theirs, ours = manifest.teacher.get("fingerprint"), plan.teacher.identity["fingerprint"]
        problem = f"teacher fingerprint: {theirs} there, {ours} now" if theirs != ours else None
        problem = problem or first_difference(manifest.collect_config.get("dataset_key", {}), plan.manifest_config()["dataset_key"])
        return ("done" if len(manifest.shards) == len(plan.units) else "resume"), problem

    def run(self, plan: Any) -> None:
        from t3d.pipeline.collect import collect

        collect(plan.cfg)


COLLECT = CollectStage()
